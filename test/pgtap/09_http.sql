-- The HTTP layer keeps connections alive and asks for gzip.
SELECT hubsync_test.reset('small');
SELECT plan(3);

SELECT hubsync_test.mock('stats/clear');
SELECT * FROM hubsync_full_incremental();

SELECT cmp_ok((SELECT count(*)::int FROM hubsync_test.requests()), '>=', 10,
              'a full load sends a dozen or more requests');
SELECT is((SELECT count(DISTINCT r->>'connection')::int FROM hubsync_test.requests() r), 1,
          'all of them share one kept-alive connection');
SELECT ok((SELECT bool_and((r->>'gzip')::boolean) FROM hubsync_test.requests() r),
          'every request accepts gzip');

SELECT * FROM finish();
