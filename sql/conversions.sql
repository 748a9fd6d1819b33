-- HubSpot sends every property as a string; the typed columns convert.
SELECT v, hubsync.to_numeric(v)
FROM unnest(ARRAY['123.00', '20.0000', '-5', '+7.5', '.5', '1e3', ' 42 ', '', 'n/a', '1,5', NULL]) AS v;

SELECT v, hubsync.to_date(v)
FROM unnest(ARRAY['2024-09-11T13:27:39.356Z', '2024-09-11T23:59:59Z', '2024-09-11T23:00:00-05:00',
                  '2024-09-11', '1726012800000', '1729859279', '2024-13-45', '2024-02-30T00:00:00Z',
                  'tomorrow', '', NULL]) AS v;

-- The date does not depend on the session's time zone.
SET TimeZone = 'Pacific/Kiritimati';
SELECT hubsync.to_date('2024-09-11T23:59:59Z'), hubsync.to_date('2024-09-11');
SET TimeZone = 'America/Los_Angeles';
SELECT hubsync.to_date('2024-09-11T23:59:59Z'), hubsync.to_date('2024-09-11');
RESET TimeZone;

SELECT quote_nullable(hubsync.to_text('')), hubsync.to_text('x'), hubsync.to_text(NULL) IS NULL AS is_null;
