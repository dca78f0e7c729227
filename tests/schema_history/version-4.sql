-- energy-worker schema. Idempotent: applied at every start (services/energy_worker/schema.py),
-- inside one transaction under an advisory lock. Table and column names follow the original
-- stack, whose Grafana dashboards read them; types are widened where the original overflowed.
--
-- Changing the schema: append idempotent statements (CREATE ... IF NOT EXISTS, ALTER ... ADD
-- COLUMN IF NOT EXISTS, or a DO block guarded by a check) and bump the version row at the end.
-- Never edit a statement that has shipped: existing databases must migrate without losing data.

CREATE TABLE IF NOT EXISTS schema_version (
    version     integer PRIMARY KEY,
    applied_at  timestamptz NOT NULL DEFAULT now()
);

-- One row per configured meter, written from the meter config file (etc/meters.toml).
CREATE TABLE IF NOT EXISTS meter_metadata (
    meter_no       integer PRIMARY KEY,
    meter_name     text    NOT NULL,
    pulse_per_kWh  integer NOT NULL CHECK (pulse_per_kWh > 0),
    max_energy     integer NOT NULL CHECK (max_energy > 0),   -- the meter's maximum power, W
    power_factor   numeric NOT NULL DEFAULT 1,
    deviation_pct  numeric NOT NULL DEFAULT 5 CHECK (deviation_pct >= 0)
);

-- One row per meter: its current state. pulse_period = -1: no previous pulse known.
CREATE TABLE IF NOT EXISTS meter_status (
    upper_index                 bigint,              -- consumption row of the latest pulse
    meter_no                    integer PRIMARY KEY REFERENCES meter_metadata (meter_no),
    reference_watt_consumption  bigint,              -- power that started the current run, W
    meter_counts                bigint  NOT NULL DEFAULT 0,
    kWh                         numeric NOT NULL DEFAULT 0,
    pulse_time_stamp            bigint,              -- Arduino millis() of the latest pulse
    pulse_period                bigint  NOT NULL DEFAULT -1,
    cor_time_stamp              timestamptz,         -- when the latest pulse happened
    time_stamp                  timestamptz NOT NULL DEFAULT now()   -- when this row changed
);
-- Additions to the original's columns.
ALTER TABLE meter_status ADD COLUMN IF NOT EXISTS run_index bigint;  -- first row of the current run
ALTER TABLE meter_status ADD COLUMN IF NOT EXISTS pulses_counted bigint NOT NULL DEFAULT 0;
ALTER TABLE meter_status ADD COLUMN IF NOT EXISTS pulses_repeated bigint NOT NULL DEFAULT 0;
ALTER TABLE meter_status ADD COLUMN IF NOT EXISTS pulses_rejected bigint NOT NULL DEFAULT 0;

-- Power and energy history, stored with a deadband (see services/energy_worker/history.py).
-- watt_consumption is NULL for a pulse that carries no power reading (first pulse after a
-- reboot, a power above the meter's maximum, a typed-in meter reading).
CREATE TABLE IF NOT EXISTS consumption (
    index             bigserial PRIMARY KEY,
    meter_no          integer NOT NULL REFERENCES meter_metadata (meter_no),
    watt_consumption  bigint,
    meter_counts      bigint  NOT NULL,
    kWh               numeric NOT NULL,
    pulse_time_stamp  bigint,
    pulse_period      bigint  NOT NULL DEFAULT -1,
    cor_time_stamp    timestamptz NOT NULL,
    time_stamp        timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS consumption_meter_time ON consumption (meter_no, cor_time_stamp);
-- A row written for a typed-in meter reading (metercount), not for a pulse.
ALTER TABLE consumption ADD COLUMN IF NOT EXISTS typed_in boolean NOT NULL DEFAULT false;

-- The original stored watts as SMALLINT and lost every pulse above 32767 W. Widen the columns of
-- an existing database of the original stack in place (numbers to bigint, a float kWh to exact
-- numeric), and give it the unique keys the upserts rely on. This runs before any view of this
-- file exists, so no view blocks the ALTERs.
DO $$
DECLARE
    col record;
BEGIN
    FOR col IN
        SELECT c.table_name, c.column_name, w.wanted
        FROM information_schema.columns AS c
        JOIN (VALUES ('consumption', 'watt_consumption', 'bigint'),
                     ('consumption', 'meter_counts', 'bigint'),
                     ('consumption', 'pulse_time_stamp', 'bigint'),
                     ('consumption', 'pulse_period', 'bigint'),
                     ('consumption', 'kwh', 'numeric'),
                     ('meter_status', 'reference_watt_consumption', 'bigint'),
                     ('meter_status', 'meter_counts', 'bigint'),
                     ('meter_status', 'pulse_time_stamp', 'bigint'),
                     ('meter_status', 'pulse_period', 'bigint'),
                     ('meter_status', 'kwh', 'numeric'),
                     ('meter_metadata', 'pulse_per_kwh', 'integer'),
                     ('meter_metadata', 'max_energy', 'integer')) AS w (table_name, column_name, wanted)
          ON c.table_name = w.table_name AND c.column_name = w.column_name
        WHERE c.table_schema = current_schema()
          AND c.data_type IN ('smallint', 'integer', 'real', 'double precision')
          AND c.data_type <> w.wanted
    LOOP
        EXECUTE format('ALTER TABLE %I ALTER COLUMN %I TYPE %s USING %I::%s',
                       col.table_name, col.column_name, col.wanted, col.column_name, col.wanted);
    END LOOP;
END
$$;
CREATE UNIQUE INDEX IF NOT EXISTS meter_metadata_meter_no ON meter_metadata (meter_no);
CREATE UNIQUE INDEX IF NOT EXISTS meter_status_meter_no ON meter_status (meter_no);

-- Exactly-once bookkeeping of the processor: the last work item (Redis epoch and sequence
-- number) whose effects are committed. Updated in the same transaction as those effects.
CREATE TABLE IF NOT EXISTS worker_progress (
    id          integer PRIMARY KEY DEFAULT 1 CHECK (id = 1),
    epoch       text    NOT NULL DEFAULT '',
    last_seq    bigint  NOT NULL DEFAULT 0,
    backlog     bigint  NOT NULL DEFAULT 0,    -- work items waiting in Redis after the last batch
    updated_at  timestamptz NOT NULL DEFAULT now()
);
INSERT INTO worker_progress (id) VALUES (1) ON CONFLICT (id) DO NOTHING;

-- The exactly-once truth: per epoch (one Redis dataset; a new one starts when Redis lost its
-- data), the last item whose effects are committed. worker_progress keeps the latest for show.
CREATE TABLE IF NOT EXISTS worker_epochs (
    epoch       text PRIMARY KEY,
    last_seq    bigint NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now()
);
INSERT INTO worker_epochs (epoch, last_seq)
    SELECT epoch, last_seq FROM worker_progress WHERE epoch <> ''
    ON CONFLICT (epoch) DO NOTHING;

INSERT INTO schema_version (version) VALUES (1) ON CONFLICT (version) DO NOTHING;

-- Pusher (issue 4): meter_daily_totals, hourly totals, push outbox
-- Written by services/energy_worker/pusher.py only. Totals are derived from consumption: a
-- meter's reading at a boundary is the kWh of its latest row at or before that instant, and the
-- pusher recomputes every hour and day whose history changed (late backlog, a moved deadband
-- row), so these tables always agree with consumption. Hours and days are local ones in the
-- pusher's TZ; the day summer time starts has 23 hours, the day it ends 25.
-- Long format (one row per period and meter) so Grafana draws one series per meter, e.g.
--   SELECT day_end AS time, meter_name AS metric, kWh_diff AS value
--   FROM meter_daily_totals JOIN meter_metadata USING (meter_no) WHERE $__timeFilter(day_end)

-- One row per local day and meter: the reading at the day's end and the day's difference.
CREATE TABLE IF NOT EXISTS meter_daily_totals (
    day          date        NOT NULL,      -- the local calendar day
    meter_no     integer     NOT NULL REFERENCES meter_metadata (meter_no),
    day_start    timestamptz NOT NULL,      -- the local midnight that starts it
    day_end      timestamptz NOT NULL,      -- and the one that ends it
    kWh_start    numeric,                   -- reading at day_start; NULL: no history before it
    kWh          numeric,                   -- reading at day_end (what the sheet receives)
    kWh_diff     numeric,                   -- kWh - kWh_start (includes a typed-in correction)
    computed_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (day, meter_no)
);
CREATE INDEX IF NOT EXISTS meter_daily_totals_day_end ON meter_daily_totals (day_end);

-- meter_totals as DOMAIN.md describes the original's: one row per day with each meter's kWh and
-- the day's difference (meters 1 to 8). A database of the original stack keeps its own table of
-- that name untouched; the pusher writes meter_daily_totals either way.
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                   WHERE n.nspname = current_schema() AND c.relname = 'meter_totals'
                     AND c.relkind <> 'v') THEN
        CREATE OR REPLACE VIEW meter_totals AS
        SELECT day,
               max(kWh) FILTER (WHERE meter_no = 1) AS kWh_1,
               max(kWh_diff) FILTER (WHERE meter_no = 1) AS kWh_diff_1,
               max(kWh) FILTER (WHERE meter_no = 2) AS kWh_2,
               max(kWh_diff) FILTER (WHERE meter_no = 2) AS kWh_diff_2,
               max(kWh) FILTER (WHERE meter_no = 3) AS kWh_3,
               max(kWh_diff) FILTER (WHERE meter_no = 3) AS kWh_diff_3,
               max(kWh) FILTER (WHERE meter_no = 4) AS kWh_4,
               max(kWh_diff) FILTER (WHERE meter_no = 4) AS kWh_diff_4,
               max(kWh) FILTER (WHERE meter_no = 5) AS kWh_5,
               max(kWh_diff) FILTER (WHERE meter_no = 5) AS kWh_diff_5,
               max(kWh) FILTER (WHERE meter_no = 6) AS kWh_6,
               max(kWh_diff) FILTER (WHERE meter_no = 6) AS kWh_diff_6,
               max(kWh) FILTER (WHERE meter_no = 7) AS kWh_7,
               max(kWh_diff) FILTER (WHERE meter_no = 7) AS kWh_diff_7,
               max(kWh) FILTER (WHERE meter_no = 8) AS kWh_8,
               max(kWh_diff) FILTER (WHERE meter_no = 8) AS kWh_diff_8
        FROM meter_daily_totals
        GROUP BY day;
    END IF;
END
$$;

-- One row per local hour and meter, the same way.
CREATE TABLE IF NOT EXISTS meter_hourly_totals (
    hour_start   timestamptz NOT NULL,
    meter_no     integer     NOT NULL REFERENCES meter_metadata (meter_no),
    hour_end     timestamptz NOT NULL,
    day          date        NOT NULL,      -- the local day the hour belongs to
    kWh_start    numeric,
    kWh          numeric,
    kWh_diff     numeric,
    computed_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (meter_no, hour_start)
);
CREATE INDEX IF NOT EXISTS meter_hourly_totals_hour ON meter_hourly_totals (hour_start);

-- Pushes to the Google Sheet: recorded first, then sent oldest first until one is answered 2xx.
CREATE TABLE IF NOT EXISTS push_outbox (
    id               bigserial   PRIMARY KEY,
    dedup_key        text        NOT NULL UNIQUE,   -- 'day:<local date>' or 'request:<epoch>:<seq>'
    reading_at       timestamptz NOT NULL,          -- the instant the readings are of
    data_string      text        NOT NULL,          -- exactly what is sent as dataString
    created_at       timestamptz NOT NULL DEFAULT now(),
    attempts         integer     NOT NULL DEFAULT 0,
    next_attempt_at  timestamptz NOT NULL DEFAULT now(),
    status_code      integer,                       -- HTTP status of the latest answer
    last_error       text,                          -- why the latest attempt failed
    sent_at          timestamptz                    -- NULL until answered 2xx
);
CREATE INDEX IF NOT EXISTS push_outbox_pending ON push_outbox (reading_at, id) WHERE sent_at IS NULL;

-- The pusher's own bookkeeping (one row).
CREATE TABLE IF NOT EXISTS pusher_state (
    id              integer PRIMARY KEY DEFAULT 1 CHECK (id = 1),
    tz              text,           -- zone the totals were computed in; a change recomputes all
    next_push_day   date,           -- first local day whose daily push is not yet recorded
    seen_index      bigint NOT NULL DEFAULT 0,   -- consumption rows up to here are accounted for
    recompute_from  timestamptz,    -- history after this may still change (a run in progress)
    totals_until    timestamptz,    -- every hour ending by here has been computed
    updated_at      timestamptz NOT NULL DEFAULT now()
);
INSERT INTO pusher_state (id) VALUES (1) ON CONFLICT (id) DO NOTHING;

INSERT INTO schema_version (version) VALUES (2) ON CONFLICT (version) DO NOTHING;

-- Grafana (issue 5): views and the read-only role
-- What the dashboards in grafana/ show, as views and functions, so that any other client gets
-- the same numbers and the panels' SQL stays short. Grafana connects as a read-only role,
-- created with its password from the environment by services/energy_worker/readonly_role.py.
-- Days and hours are those of the session's TimeZone (that module sets it for the role).
-- Everything here is CREATE OR REPLACE, applied at every start: a changed body takes effect.

-- DOMAIN.md: t ms after a meter's last pulse its power is at most 3_600_000_000 / (t * pulses
-- per kWh). No pulse means low power, not zero, and not the last reading forever.
CREATE OR REPLACE FUNCTION power_upper_bound_w(p_pulses_per_kwh integer, p_ms numeric)
RETURNS numeric LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT round(3600000000 / (greatest(p_ms, 1) * p_pulses_per_kwh), 3)
$$;

-- Each meter's latest pulse (the deadband always stores the latest one). A typed-in meter
-- reading is no pulse: its row (the typing time, no power) is skipped.
CREATE OR REPLACE VIEW meter_last_pulse AS
SELECT m.meter_no, m.meter_name, m.pulse_per_kwh, m.max_energy,
       c.cor_time_stamp AS last_pulse,
       c.watt_consumption AS last_watt,     -- NULL: the latest pulse carried no power reading
       c.kwh AS last_kwh                    -- the reading at that pulse
FROM meter_metadata m
LEFT JOIN LATERAL (
    SELECT h.cor_time_stamp, h.watt_consumption, h.kwh FROM consumption h
    WHERE h.meter_no = m.meter_no AND NOT h.typed_in
    ORDER BY h.cor_time_stamp DESC, h.index DESC LIMIT 1
) c ON true;

-- The most a meter can draw at p_at, given its latest pulse: the latest reading (or the meter's
-- maximum when that pulse had none), capped by the upper bound, which falls toward zero.
CREATE OR REPLACE FUNCTION meter_power_at(p_last_watt bigint, p_max_watt integer,
                                          p_pulses_per_kwh integer, p_last_pulse timestamptz,
                                          p_at timestamptz)
RETURNS numeric LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE WHEN p_last_pulse IS NOT NULL THEN
        least(coalesce(p_last_watt, p_max_watt)::numeric,
              power_upper_bound_w(p_pulses_per_kwh,
                                  extract(epoch FROM p_at - p_last_pulse) * 1000))
    END
$$;

-- Power per meter in [p_from, p_to] for a step-before line: a pulse's power is the mean over
-- the period that ends at it. Where no power is known the line follows the bound from the pulse
-- before: after the latest pulse (until now), and before a pulse without a power reading (first
-- after a reboot, above the maximum), which gets the bound at its own time. In such a gap:
-- points at 1, 2, 4, 8 ... times the period of the pulse that starts it, and at its end, so a
-- meter that went quiet falls toward zero. The latest point before p_from starts each line at
-- the left edge. Typed-in readings are no pulses and are skipped.
CREATE OR REPLACE FUNCTION power_series(p_from timestamptz, p_to timestamptz)
RETURNS TABLE (at timestamptz, meter_no integer, meter_name text, watt numeric)
LANGUAGE sql STABLE AS $$
    WITH pulses AS (
        -- Each meter's pulses in the range, the one before it and the one after it.
        SELECT m.meter_no, m.meter_name, m.pulse_per_kwh, m.max_energy, c.index, c.t, c.w
        FROM meter_metadata m
        CROSS JOIN LATERAL (
            (SELECT h.index, h.cor_time_stamp AS t, h.watt_consumption AS w FROM consumption h
             WHERE h.meter_no = m.meter_no AND NOT h.typed_in AND h.cor_time_stamp < p_from
             ORDER BY h.cor_time_stamp DESC, h.index DESC LIMIT 1)
            UNION ALL
            (SELECT h.index, h.cor_time_stamp, h.watt_consumption FROM consumption h
             WHERE h.meter_no = m.meter_no AND NOT h.typed_in
               AND h.cor_time_stamp BETWEEN p_from AND p_to)
            UNION ALL
            (SELECT h.index, h.cor_time_stamp, h.watt_consumption FROM consumption h
             WHERE h.meter_no = m.meter_no AND NOT h.typed_in AND h.cor_time_stamp > p_to
             ORDER BY h.cor_time_stamp, h.index LIMIT 1)
        ) c
    ), gaps AS (
        -- Stretches without a power reading: (t0, t1] after the pulse at t0 (power w0).
        SELECT p.meter_no, p.meter_name, p.pulse_per_kwh, p.max_energy,
               b.t AS t0, b.w AS w0, p.t AS t1
        FROM (SELECT * FROM pulses WHERE pulses.w IS NULL) p
        CROSS JOIN LATERAL (
            SELECT h.cor_time_stamp AS t, h.watt_consumption AS w FROM consumption h
            WHERE h.meter_no = p.meter_no AND NOT h.typed_in AND h.cor_time_stamp <= p.t
              AND (h.cor_time_stamp < p.t OR h.index < p.index)
            ORDER BY h.cor_time_stamp DESC, h.index DESC LIMIT 1
        ) b
        UNION ALL
        -- Grafana's "now" is a little earlier than the database's: end the line at p_to then.
        SELECT l.meter_no, l.meter_name, l.pulse_per_kwh, l.max_energy,
               l.last_pulse, l.last_watt, least(now(), p_to)
        FROM meter_last_pulse l
        WHERE l.last_pulse IS NOT NULL
    ), points AS (
        SELECT p.t, p.meter_no, p.meter_name, p.w::numeric AS w
        FROM pulses p
        WHERE p.w IS NOT NULL AND p.t <= p_to
        UNION ALL
        SELECT d.t, g.meter_no, g.meter_name,
               meter_power_at(g.w0, g.max_energy, g.pulse_per_kwh, g.t0, d.t)
        FROM gaps g
        CROSS JOIN LATERAL (SELECT least(g.t1, p_to) AS t_end) e
        -- first_ms: where the bound meets the reading before the gap (its period); ratio: how
        -- many of those fit before the gap's end. k stops short of it, so no point can
        -- overflow a timestamp whatever the filter's order of evaluation.
        CROSS JOIN LATERAL (SELECT 3600000000.0 / (coalesce(g.w0, g.max_energy)
                                                   * g.pulse_per_kwh) AS first_ms) q
        CROSS JOIN LATERAL (SELECT extract(epoch FROM e.t_end - g.t0) * 1000
                                   / q.first_ms AS ratio) r
        CROSS JOIN LATERAL (
            SELECT g.t0 + make_interval(secs => q.first_ms * 2 ^ k / 1000) AS t
            FROM generate_series(
                0, CASE WHEN r.ratio > 1 THEN ceil(ln(r.ratio) / ln(2))::integer - 1
                        ELSE -1 END) k
            UNION ALL
            SELECT e.t_end
        ) d
        WHERE d.t > g.t0
    )
    SELECT pt.t, pt.meter_no, pt.meter_name, pt.w FROM points pt
    WHERE pt.t BETWEEN p_from AND p_to
    UNION ALL
    (SELECT DISTINCT ON (pt.meter_no) pt.t, pt.meter_no, pt.meter_name, pt.w FROM points pt
     WHERE pt.t < p_from
     ORDER BY pt.meter_no, pt.t DESC)
    ORDER BY 1, 2
$$;

-- A meter's reading at an instant: the kWh of its latest row at or before it (ties: the row
-- written last); NULL before its history. The pusher's totals and the Google push read the same
-- (services/energy_worker/store.py), and the deadband stores the last pulse before every
-- quarter-hour boundary (services/energy_worker/history.py), so at a boundary it is exact.
CREATE OR REPLACE FUNCTION meter_kwh_at(p_meter_no integer, p_at timestamptz)
RETURNS numeric LANGUAGE sql STABLE AS $$
    SELECT c.kwh FROM consumption c
    WHERE c.meter_no = p_meter_no AND c.cor_time_stamp <= p_at
    ORDER BY c.cor_time_stamp DESC, c.index DESC LIMIT 1
$$;

-- Energy per meter per calendar period ('hour', 'day', 'week', 'month', 'year') of the
-- session's time zone, for the periods that overlap [p_from, p_to): the readings at the period's
-- start and end (meter_kwh_at; the latest reading while it is still running) and their
-- difference, so an hour or a day is what meter_hourly_totals and meter_daily_totals hold. The period
-- in which a meter's history begins counts from its first reading (where those tables have no
-- number); periods before it are left out. A day that changes to or from summer time has 23 or
-- 25 hours.
CREATE OR REPLACE FUNCTION energy_per_period(p_from timestamptz, p_to timestamptz,
                                             p_unit text)
RETURNS TABLE (period_start timestamptz, period_end timestamptz, meter_no integer,
               meter_name text, kwh_start numeric, kwh_end numeric, kwh numeric)
LANGUAGE sql STABLE AS $$
    WITH starts AS (
        SELECT s FROM generate_series(date_trunc(p_unit, p_from), p_to,
                                      ('1 ' || p_unit)::interval) s
        WHERE s < p_to
    ), edges AS (
        SELECT s FROM starts
        UNION
        SELECT max(s) + ('1 ' || p_unit)::interval FROM starts
    ), readings AS (
        SELECT m.meter_no, m.meter_name, e.s, meter_kwh_at(m.meter_no, e.s) AS kwh
        FROM meter_metadata m CROSS JOIN edges e
        WHERE e.s IS NOT NULL
    ), spans AS (
        SELECT r.s AS period_start, lead(r.s) OVER w AS period_end, r.meter_no, r.meter_name,
               r.kwh AS kwh_start, lead(r.kwh) OVER w AS kwh_end
        FROM readings r
        WINDOW w AS (PARTITION BY r.meter_no ORDER BY r.s)
    )
    SELECT sp.period_start, sp.period_end, sp.meter_no, sp.meter_name,
           coalesce(sp.kwh_start, f.kwh), sp.kwh_end,
           trim_scale(sp.kwh_end - coalesce(sp.kwh_start, f.kwh))
    FROM spans sp
    LEFT JOIN LATERAL (
        SELECT c.kwh FROM consumption c
        WHERE sp.kwh_start IS NULL AND c.meter_no = sp.meter_no
        ORDER BY c.cor_time_stamp, c.index LIMIT 1
    ) f ON true
    WHERE sp.period_end IS NOT NULL AND sp.kwh_end IS NOT NULL
    ORDER BY sp.period_start, sp.meter_no
$$;

-- One row per meter: what the overview panel shows. Its reading includes a typed-in one.
CREATE OR REPLACE VIEW meter_overview AS
SELECT l.meter_no, l.meter_name,
       meter_power_at(l.last_watt, l.max_energy, l.pulse_per_kwh, l.last_pulse, now())
           AS watt_now,
       l.last_watt,
       coalesce(s.kwh, meter_kwh_at(l.meter_no, 'infinity')) AS kwh,
       l.last_pulse,
       extract(epoch FROM now() - l.last_pulse) AS last_pulse_age_s,
       coalesce(s.pulses_counted, 0) AS pulses_counted,
       coalesce(s.pulses_repeated, 0) AS pulses_repeated,
       coalesce(s.pulses_rejected, 0) AS pulses_rejected
FROM meter_last_pulse l
LEFT JOIN meter_status s ON s.meter_no = l.meter_no;

-- The worker's state: work items waiting in Redis after its last batch, and when that was.
CREATE OR REPLACE VIEW worker_overview AS
SELECT w.backlog, w.last_seq, w.updated_at,
       extract(epoch FROM now() - w.updated_at) AS updated_age_s,
       (SELECT coalesce(sum(s.pulses_rejected), 0) FROM meter_status s) AS pulses_rejected
FROM worker_progress w
WHERE w.id = 1;

INSERT INTO schema_version (version) VALUES (3) ON CONFLICT (version) DO NOTHING;

-- Version 4: exactly-once bookkeeping per epoch (worker_epochs).
INSERT INTO schema_version (version) VALUES (4) ON CONFLICT (version) DO NOTHING;
