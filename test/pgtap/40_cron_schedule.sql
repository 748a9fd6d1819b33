-- hubsync.cron_parse() and hubsync.cron_next_run() follow pg_cron 1.4's
-- schedule syntax and Vixie cron's day matching, and an invalid schedule
-- raises an error that names the field at fault.
BEGIN;
SELECT plan(80);

-- Parsed sets.
SELECT is((SELECT row(minutes, hours, days, months, weekdays, days_star, weekdays_star)::text
             FROM hubsync.cron_parse('*/15 * * * *')),
          row('{0,15,30,45}'::int[], ARRAY(SELECT generate_series(0, 23)),
              ARRAY(SELECT generate_series(1, 31)), ARRAY(SELECT generate_series(1, 12)),
              '{0,1,2,3,4,5,6}'::int[], true, true)::text,
          'cron_parse: */15 * * * *');
SELECT is((SELECT row(minutes, hours, days, months, weekdays, days_star, weekdays_star)::text
             FROM hubsync.cron_parse('0,30 9-17/4 1,15 JAN-mar mon-fri,7')),
          row('{0,30}'::int[], '{9,13,17}'::int[], '{1,15}'::int[], '{1,2,3}'::int[],
              '{0,1,2,3,4,5}'::int[], false, false)::text,
          'cron_parse: lists, stepped range, month and weekday names, 7 as Sunday');
SELECT is((SELECT weekdays FROM hubsync.cron_parse('0 0 * * 0-7')), '{0,1,2,3,4,5,6}'::int[],
          'cron_parse: 0-7 covers each weekday once');
SELECT is((SELECT minutes FROM hubsync.cron_parse('0-59/100 * * * *')), '{0}'::int[],
          'cron_parse: a step wider than its range keeps the first value');
SELECT is((SELECT hours FROM hubsync.cron_parse(E'  0\t 00,05  *  *  * ')), '{0,5}'::int[],
          'cron_parse: tabs, repeated blanks and leading zeros');
SELECT is((SELECT row(days_star, weekdays_star)::text FROM hubsync.cron_parse('0 0 */2 * 1-5')),
          row(true, false)::text, 'cron_parse: a day field starting with * is starred');

-- Next runs after Friday 2025-03-14 10:07:30 GMT.
SELECT is(hubsync.cron_next_run(schedule, '2025-03-14 10:07:30+00'), expected::timestamptz,
          format('cron_next_run: "%s" (%s)', schedule, why))
FROM (VALUES
    ('* * * * *',          '2025-03-14 10:08+00', 'the next minute'),
    ('*/15 * * * *',       '2025-03-14 10:15+00', 'next quarter hour'),
    ('7 * * * *',          '2025-03-14 11:07+00', 'the current minute does not count'),
    ('8 * * * *',          '2025-03-14 10:08+00', 'later this hour'),
    ('5,50 * * * *',       '2025-03-14 10:50+00', 'list'),
    ('0 0 * * *',          '2025-03-15 00:00+00', 'midnight tomorrow'),
    ('30 9 * * *',         '2025-03-15 09:30+00', 'time already passed today'),
    ('0 9-17 * * *',       '2025-03-14 11:00+00', 'hour range'),
    ('0 9-17/4 * * *',     '2025-03-14 13:00+00', 'stepped hour range'),
    ('0 12 * * mon-fri',   '2025-03-14 12:00+00', 'weekday names, today is Friday'),
    ('0 9 * * sat,sun',    '2025-03-15 09:00+00', 'weekend'),
    ('0 9 * * 7',          '2025-03-16 09:00+00', '7 is Sunday'),
    ('0 9 * * 0',          '2025-03-16 09:00+00', '0 is Sunday'),
    ('0 0 1 * *',          '2025-04-01 00:00+00', 'first of the month'),
    ('0 0 1 jan *',        '2026-01-01 00:00+00', 'next year'),
    ('0 0 29 feb *',       '2028-02-29 00:00+00', 'leap day'),
    ('0 0 31 * *',         '2025-03-31 00:00+00', 'day 31'),
    ('0 0 13 * fri',       '2025-03-21 00:00+00', 'both day fields restricted: either matches'),
    ('0 0 1-31/2 * fri',   '2025-03-15 00:00+00', 'unstarred odd days or Fridays'),
    ('0 0 */2 * fri',      '2025-03-21 00:00+00', 'starred odd days and Fridays'),
    ('0 0 * * */3',        '2025-03-15 00:00+00', 'starred weekday step'),
    ('0 0 29 2 1',         '2026-02-02 00:00+00', 'Feb 29 or a Monday in February'),
    ('0 0 29 2 */7',       '2032-02-29 00:00+00', 'Feb 29 that is a Sunday'),
    ('@hourly',            '2025-03-14 11:00+00', '@hourly'),
    ('@daily',             '2025-03-15 00:00+00', '@daily'),
    ('@midnight',          '2025-03-15 00:00+00', '@midnight'),
    ('@weekly',            '2025-03-16 00:00+00', '@weekly is Sunday midnight'),
    ('@monthly',           '2025-04-01 00:00+00', '@monthly'),
    ('@yearly',            '2026-01-01 00:00+00', '@yearly'),
    ('@annually',          '2026-01-01 00:00+00', '@annually')
) AS cases(schedule, expected, why);

SELECT is(hubsync.cron_next_run('*/15 * * * *', '2025-03-14 10:15:00+00'), '2025-03-14 10:30+00',
          'cron_next_run: a start on a matching minute moves to the next match');
SELECT is(hubsync.cron_next_run('* * * * *', '2025-12-31 23:59:30+00'), '2026-01-01 00:00+00',
          'cron_next_run: year rollover');
SELECT is(hubsync.cron_next_run('0 0 31 * *', '2025-04-01 00:00+00'), '2025-05-31 00:00+00',
          'cron_next_run: months without day 31 are skipped');
SELECT is(hubsync.cron_next_run('0 0 29 2 *', '2096-03-01 00:00+00'), '2104-02-29 00:00+00',
          'cron_next_run: 2100 is not a leap year');
SELECT is(hubsync.cron_next_run('0 9 * * *', '2025-03-14 10:07:30+00', 'America/New_York'),
          '2025-03-14 13:00+00', 'cron_next_run: 09:00 in a named time zone');
SELECT is(hubsync.cron_next_run('0 9 * * *', '2025-03-14 10:07:30+05'), '2025-03-14 09:00+00',
          'cron_next_run: the input offset does not change the GMT reading');
SELECT is(hubsync.cron_next_run('0 0 30 feb *', '2025-03-14 10:07:30+00'), NULL,
          'cron_next_run: NULL for a schedule that never runs');
SELECT is(hubsync.cron_next_run('*/5 * * * *', NULL), NULL, 'cron_next_run: NULL start');
SELECT ok(hubsync.cron_next_run('*/5 * * * *') > now()
          AND hubsync.cron_next_run('*/5 * * * *') <= now() + interval '5 minutes',
          'cron_next_run: the default start is now');

-- Invalid schedules: SQLSTATE 22023, the schedule in the message, the
-- problem in the detail.
SELECT is(hubsync_test.error_of(format('SELECT hubsync.cron_parse(%L)', schedule))
            - 'hint',
          jsonb_build_object('sqlstate', '22023',
                             'message', format('invalid cron schedule "%s"', schedule),
                             'detail', detail),
          format('cron_parse rejects "%s"', schedule))
FROM (VALUES
    ('* * * *',         'The schedule has 4 fields; pg_cron expects 5: minute, hour, day of month, month, day of week.'),
    ('* * * * * *',     'The schedule has 6 fields; pg_cron expects 5: minute, hour, day of month, month, day of week.'),
    ('',                'The schedule has 0 fields; pg_cron expects 5: minute, hour, day of month, month, day of week.'),
    ('60 * * * *',      'The minute value 60 is out of range 0-59.'),
    ('* 24 * * *',      'The hour value 24 is out of range 0-23.'),
    ('* * 0 * *',       'The day-of-month value 0 is out of range 1-31.'),
    ('* * 32 * *',      'The day-of-month value 32 is out of range 1-31.'),
    ('* * * 13 *',      'The month value 13 is out of range 1-12.'),
    ('* * * * 8',       'The day-of-week value 8 is out of range 0-7.'),
    ('99999 * * * *',   'The minute value 99999 is out of range 0-59.'),
    ('5/10 * * * *',    'The minute step "5/10" needs * or a range before the slash, as in */10 or 5-59/10.'),
    ('*/0 * * * *',     'The minute step in "*/0" must be between 1 and 9999.'),
    ('*/99999 * * * *', 'The minute step in "*/99999" must be between 1 and 9999.'),
    ('10-5 * * * *',    'The minute range "10-5" is empty because it starts after it ends.'),
    ('0 0 * mar-jan *', 'The month range "mar-jan" is empty because it starts after it ends.'),
    ('1,,2 * * * *',    'The minute field element "" is not *, a value, a range a-b or a step */n or a-b/n.'),
    ('1-5/2/3 * * * *', 'The minute field element "1-5/2/3" is not *, a value, a range a-b or a step */n or a-b/n.'),
    ('*-5 * * * *',     'The minute field element "*-5" is not *, a value, a range a-b or a step */n or a-b/n.'),
    ('mon * * * *',     'The minute field accepts numbers only, not "mon".'),
    ('0 0 * * sunday',  '"sunday" is not a day-of-week name; use one of sun, mon, tue, wed, thu, fri, sat.'),
    ('0 0 * foo *',     '"foo" is not a month name; use one of jan, feb, mar, apr, may, jun, jul, aug, sep, oct, nov, dec.'),
    ('*/5 * * * *,',    'The day-of-week field element "" is not *, a value, a range a-b or a step */n or a-b/n.'),
    ('@reboot',         '@reboot runs a job only when the server starts, which does not keep the mirror current.'),
    ('@every',          'Known macros are @hourly, @daily, @midnight, @weekly, @monthly, @yearly and @annually.'),
    ('@HOURLY',         'Known macros are @hourly, @daily, @midnight, @weekly, @monthly, @yearly and @annually.'),
    ('30 seconds',      'The schedule has 2 fields; pg_cron expects 5: minute, hour, day of month, month, day of week.')
) AS cases(schedule, detail);

SELECT alike(hubsync_test.error_of($$SELECT hubsync.cron_parse('61 * * * *')$$)->>'hint',
            'Use five fields "minute hour day-of-month month day-of-week" in GMT%',
            'cron_parse: the hint shows the five fields and the time zone');
SELECT is(hubsync_test.error_of($$SELECT hubsync.cron_parse(NULL)$$)->>'sqlstate', '22004',
          'cron_parse: NULL raises null_value_not_allowed');
SELECT is(hubsync_test.error_of($$SELECT hubsync._cron_check('0 0 31 2 *')$$)->>'detail',
          'The schedule never runs: no date matches its day-of-month, month and day-of-week fields.',
          '_cron_check rejects a schedule that never runs');
SELECT is(hubsync_test.error_of($$SELECT hubsync._cron_check('0 0 29 2 *')$$), NULL,
          '_cron_check accepts a schedule that runs every four years');

-- Every schedule hubsync accepts is one pg_cron accepts too.
SELECT lives_ok(format($$SELECT cron.schedule('hubsync_syntax_probe', %L, 'SELECT 1')$$, schedule),
                format('pg_cron accepts "%s"', schedule))
FROM (VALUES ('*/15 * * * *'), ('0,30 9-17/4 1,15 JAN-mar mon-fri,7'), ('0 0 */2 * fri'),
             ('0-59/100 * * * *'), ('@weekly')) AS cases(schedule);

SELECT * FROM finish();
ROLLBACK;
