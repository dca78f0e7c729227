-- energy-worker schema. Idempotent: applied at every start (services/energy_worker/adapters/schema.py),
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

-- One row per configured meter, written from the meter config file (services/energy_worker/meters.toml).
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
-- (Version 10 renamed the table meter_status_stored and made meter_status a view: these
-- statements, applied at every start, act on the table only while it has its first name.)
DO $$
BEGIN
    IF to_regclass('meter_status_stored') IS NULL THEN
        ALTER TABLE meter_status ADD COLUMN IF NOT EXISTS run_index bigint;  -- first row of the current run
        ALTER TABLE meter_status ADD COLUMN IF NOT EXISTS pulses_counted bigint NOT NULL DEFAULT 0;
        ALTER TABLE meter_status ADD COLUMN IF NOT EXISTS pulses_repeated bigint NOT NULL DEFAULT 0;
        ALTER TABLE meter_status ADD COLUMN IF NOT EXISTS pulses_rejected bigint NOT NULL DEFAULT 0;
    END IF;
END
$$;

-- Power and energy history, stored with a deadband (see services/energy_worker/core/history.py).
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
DO $$
BEGIN
    IF to_regclass('meter_status_stored') IS NULL THEN  -- (version 10: see above)
        CREATE UNIQUE INDEX IF NOT EXISTS meter_status_meter_no ON meter_status (meter_no);
    END IF;
END
$$;

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

-- Pusher: meter_daily_totals, hourly totals, push outbox
-- Written by services/energy_worker/programs/pusher/ only. Totals are derived from consumption: a
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
    kWh_diff     numeric,                   -- energy counted by pulses (version 5; see kWh_set)
    computed_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (day, meter_no)
);
CREATE INDEX IF NOT EXISTS meter_daily_totals_day_end ON meter_daily_totals (day_end);

-- meter_totals as docs/DOMAIN.md describes the original's: one row per day with each meter's kWh and
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

-- Grafana: views and the read-only role
-- What the dashboards in grafana/ show, as views and functions, so that any other client gets
-- the same numbers and the panels' SQL stays short. Grafana connects as a read-only role,
-- created with its password from the environment by services/energy_worker/adapters/readonly_role.py.
-- Days and hours are those of the session's TimeZone (that module sets it for the role).
-- Everything here is CREATE OR REPLACE, applied at every start: a changed body takes effect.

-- docs/DOMAIN.md: t ms after a meter's last pulse its power is at most 3_600_000_000 / (t * pulses
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
-- (services/energy_worker/adapters/sql/totals.py), and the deadband stores the last pulse before every
-- quarter-hour boundary (services/energy_worker/core/history.py), so at a boundary it is exact.
CREATE OR REPLACE FUNCTION meter_kwh_at(p_meter_no integer, p_at timestamptz)
RETURNS numeric LANGUAGE sql STABLE AS $$
    SELECT c.kwh FROM consumption c
    WHERE c.meter_no = p_meter_no AND c.cor_time_stamp <= p_at
    ORDER BY c.cor_time_stamp DESC, c.index DESC LIMIT 1
$$;

-- energy_per_period(from, to, unit): energy per meter per local period, defined in version 5
-- below (it counts pulses, which need the column consumption.pulses added there).

-- meter_overview and worker_overview: after version 10 below (they read the view meter_status).

INSERT INTO schema_version (version) VALUES (3) ON CONFLICT (version) DO NOTHING;

-- Version 4: exactly-once bookkeeping per epoch (worker_epochs).
INSERT INTO schema_version (version) VALUES (4) ON CONFLICT (version) DO NOTHING;

-- Version 5 (the operator's view): typed-in readings are no consumption; dead letters.

-- consumption.pulses: the meter's count of pulses counted (meter_status.pulses_counted) as of
-- the row; a typed-in reading (typed_in) carries it unchanged. The energy used in a period is
-- the difference of the pulses at its ends divided by the pulse constant; the difference of the
-- readings (kWh) also holds the typed-in corrections, which set the meter and are no energy.
-- A database from before the column gets it once, when it is added: per meter, in the order of
-- its history, the sum of the count's steps from row to row where the row is a pulse (a typed-in
-- row steps by none; a step down, which no pulse makes, by none; a meter's first row is one
-- pulse), and each meter's pulses_counted becomes that of its latest row, where the processor
-- goes on counting. The pusher then recomputes every total once (its state starts over).
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM information_schema.columns
                   WHERE table_schema = current_schema() AND table_name = 'consumption'
                     AND column_name = 'pulses') THEN
        ALTER TABLE consumption ADD COLUMN pulses bigint;
        UPDATE consumption AS c SET pulses = b.pulses
        FROM (SELECT s.index,
                     sum(s.step) OVER (PARTITION BY s.meter_no
                                       ORDER BY s.cor_time_stamp, s.index) AS pulses
              FROM (SELECT h.index, h.meter_no, h.cor_time_stamp,
                           CASE WHEN h.typed_in THEN 0
                                ELSE greatest(coalesce(h.meter_counts - lag(h.meter_counts)
                                                       OVER w, 1), 0)
                           END AS step
                    FROM consumption h
                    WINDOW w AS (PARTITION BY h.meter_no ORDER BY h.cor_time_stamp, h.index)
                   ) s
             ) b
        WHERE c.index = b.index;
        ALTER TABLE consumption ALTER COLUMN pulses SET NOT NULL;
        UPDATE meter_status AS s SET pulses_counted = l.pulses
        FROM (SELECT DISTINCT ON (c.meter_no) c.meter_no, c.pulses FROM consumption c
              ORDER BY c.meter_no, c.cor_time_stamp DESC, c.index DESC) l
        WHERE s.meter_no = l.meter_no;
        UPDATE pusher_state SET seen_index = 0, recompute_from = NULL, totals_until = NULL,
                                updated_at = now();
    END IF;
END
$$;

-- The totals count pulses only in kWh_diff; kWh_set is the sum of the typed-in corrections in
-- the period (the change of the reading minus the energy counted), so that
-- kWh_start + kWh_diff + kWh_set = kWh. Filled in by the recomputation above.
ALTER TABLE meter_hourly_totals ADD COLUMN IF NOT EXISTS kWh_set numeric;
ALTER TABLE meter_daily_totals ADD COLUMN IF NOT EXISTS kWh_set numeric;

-- Input that could not be used, for Grafana: keys the router rejected (which it also keeps in
-- Redis's capped list energy-worker:deadletter) and work items the processor could not apply.
-- Written in the processor's transaction, exactly once; the pusher keeps the newest 10,000.
CREATE TABLE IF NOT EXISTS dead_letters (
    id      bigserial   PRIMARY KEY,
    at      timestamptz NOT NULL,       -- when the router took the key
    key     text        NOT NULL,       -- printable
    value   text        NOT NULL,       -- printable, at most 200 bytes of it
    reason  text        NOT NULL
);
CREATE INDEX IF NOT EXISTS dead_letters_at ON dead_letters (at);

-- Grafana, version 5 (see the Grafana section above for how these are used).

-- A meter's count of pulses at an instant, as meter_kwh_at reads its reading: that of its latest
-- row at or before it; NULL before its history. Energy between two instants is the difference
-- divided by the meter's pulse_per_kWh, typed-in readings excluded.
CREATE OR REPLACE FUNCTION meter_pulses_at(p_meter_no integer, p_at timestamptz)
RETURNS bigint LANGUAGE sql STABLE AS $$
    SELECT c.pulses FROM consumption c
    WHERE c.meter_no = p_meter_no AND c.cor_time_stamp <= p_at
    ORDER BY c.cor_time_stamp DESC, c.index DESC LIMIT 1
$$;

-- Version 5 added kwh_set to energy_per_period's result: a function's result type cannot be
-- changed in place.
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_proc p
               WHERE p.proname = 'energy_per_period'
                 AND p.pronamespace = to_regnamespace(current_schema())
                 AND NOT ('kwh_set' = ANY (p.proargnames))) THEN
        DROP FUNCTION energy_per_period(timestamptz, timestamptz, text);
    END IF;
END
$$;

-- Energy per meter per calendar period ('hour', 'day', 'week', 'month', 'year') of the
-- session's time zone, for the periods that overlap [p_from, p_to): the readings at the period's
-- start and end (as meter_kwh_at; the latest reading while it is still running), the energy
-- counted by pulses in between (kwh, as meter_pulses_at) and the typed-in corrections
-- (kwh_set = kwh_end - kwh_start - kwh), so an hour or a day is what meter_hourly_totals and
-- meter_daily_totals hold. The period in which a meter's history begins counts from its first
-- row (where those tables have no number); periods before it are left out. A day that changes
-- to or from summer time has 23 or 25 hours.
CREATE OR REPLACE FUNCTION energy_per_period(p_from timestamptz, p_to timestamptz,
                                             p_unit text)
RETURNS TABLE (period_start timestamptz, period_end timestamptz, meter_no integer,
               meter_name text, kwh_start numeric, kwh_end numeric, kwh numeric,
               kwh_set numeric)
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
        SELECT m.meter_no, m.meter_name, m.pulse_per_kwh, e.s, r.kwh, r.pulses
        FROM meter_metadata m CROSS JOIN edges e
        LEFT JOIN LATERAL (
            SELECT c.kwh, c.pulses FROM consumption c
            WHERE c.meter_no = m.meter_no AND c.cor_time_stamp <= e.s
            ORDER BY c.cor_time_stamp DESC, c.index DESC LIMIT 1
        ) r ON true
        WHERE e.s IS NOT NULL
    ), spans AS (
        SELECT r.s AS period_start, lead(r.s) OVER w AS period_end, r.meter_no, r.meter_name,
               r.pulse_per_kwh, r.kwh AS kwh_start, lead(r.kwh) OVER w AS kwh_end,
               r.pulses AS pulses_start, lead(r.pulses) OVER w AS pulses_end
        FROM readings r
        WINDOW w AS (PARTITION BY r.meter_no ORDER BY r.s)
    ), energy AS (
        SELECT sp.period_start, sp.period_end, sp.meter_no, sp.meter_name,
               coalesce(sp.kwh_start, f.kwh) AS kwh_start, sp.kwh_end,
               trim_scale((sp.pulses_end - coalesce(sp.pulses_start, f.pulses))::numeric
                          / sp.pulse_per_kwh) AS kwh
        FROM spans sp
        LEFT JOIN LATERAL (
            SELECT c.kwh, c.pulses FROM consumption c
            WHERE sp.kwh_start IS NULL AND c.meter_no = sp.meter_no
            ORDER BY c.cor_time_stamp, c.index LIMIT 1
        ) f ON true
        WHERE sp.period_end IS NOT NULL AND sp.kwh_end IS NOT NULL
    )
    SELECT en.period_start, en.period_end, en.meter_no, en.meter_name, en.kwh_start,
           en.kwh_end, en.kwh, trim_scale(en.kwh_end - en.kwh_start - en.kwh)
    FROM energy en
    ORDER BY en.period_start, en.meter_no
$$;

-- Every typed-in meter reading: when, which meter, the reading it set, the reading just before
-- it and the correction (kwh_set; NULL when it began the meter's history), with a line of text
-- for Grafana's annotations.
CREATE OR REPLACE VIEW reading_corrections AS
SELECT c.cor_time_stamp AS at, c.meter_no, m.meter_name, c.kwh, p.kwh AS kwh_before,
       c.kwh - p.kwh AS kwh_set,
       format('%s: reading set to %s kWh%s', m.meter_name, c.kwh,
              CASE WHEN p.kwh IS NULL THEN ''
                   ELSE format(' (%s%s kWh)', CASE WHEN c.kwh >= p.kwh THEN '+' END,
                               c.kwh - p.kwh) END) AS note
FROM consumption c
JOIN meter_metadata m ON m.meter_no = c.meter_no
LEFT JOIN LATERAL (
    SELECT h.kwh FROM consumption h
    WHERE h.meter_no = c.meter_no
      AND (h.cor_time_stamp < c.cor_time_stamp
           OR (h.cor_time_stamp = c.cor_time_stamp AND h.index < c.index))
    ORDER BY h.cor_time_stamp DESC, h.index DESC LIMIT 1
) p ON true
WHERE c.typed_in;

-- Settings of the service that the database's own views need (version 7). meter_silent_after_s:
-- how long a meter must be quiet before it counts as silent, the one threshold of
-- `energy-worker status` and Grafana alike; the set-up writes it from METER_SILENT_AFTER.
CREATE TABLE IF NOT EXISTS worker_settings (
    name    text    PRIMARY KEY,
    value   numeric NOT NULL
);
INSERT INTO worker_settings (name, value) VALUES ('meter_silent_after_s', 3600)
    ON CONFLICT (name) DO NOTHING;

-- How long each meter has been silent, against what its last power implies: at P W a meter of
-- k pulses per kWh pulses every 3_600_000 / (P * k) s (expected_s). silence_ratio is the
-- silence in such periods; suspicious: silent for at least 100 of them and at least
-- meter_silent_after_s (worker_settings; an hour unless METER_SILENT_AFTER says otherwise: a
-- load that was switched off is silent too, so this is a question, not a verdict). NULL where
-- the last pulse carried no power reading, or there was none.
CREATE OR REPLACE VIEW meter_silence AS
SELECT l.meter_no, l.meter_name, l.last_pulse, l.last_watt,
       extract(epoch FROM now() - l.last_pulse) AS silent_s,
       3600000.0 / (nullif(l.last_watt, 0) * l.pulse_per_kwh) AS expected_s,
       extract(epoch FROM now() - l.last_pulse) * nullif(l.last_watt, 0) * l.pulse_per_kwh
           / 3600000.0 AS silence_ratio,
       coalesce(extract(epoch FROM now() - l.last_pulse)
                    >= (SELECT value FROM worker_settings WHERE name = 'meter_silent_after_s')
                AND extract(epoch FROM now() - l.last_pulse) * l.last_watt * l.pulse_per_kwh
                    >= 100 * 3600000.0, false) AS suspicious
FROM meter_last_pulse l;

-- The Google Sheet push: the last one answered 2xx, how many wait, the failed attempts of
-- those waiting, how long the oldest failing one has been failing (since it was recorded: a
-- push is tried at once), its error and the next attempt. One row, also with an empty outbox.
CREATE OR REPLACE VIEW push_overview AS
SELECT max(o.sent_at) AS last_sent_at,
       extract(epoch FROM now() - max(o.sent_at)) AS last_sent_age_s,
       count(*) FILTER (WHERE o.sent_at IS NULL) AS pending,
       coalesce(sum(o.attempts) FILTER (WHERE o.sent_at IS NULL), 0) AS failed_attempts,
       coalesce(extract(epoch FROM now() - min(o.created_at)
                                           FILTER (WHERE o.sent_at IS NULL AND o.attempts > 0)),
                0) AS failing_for_s,
       (SELECT f.last_error FROM push_outbox f WHERE f.sent_at IS NULL
        ORDER BY f.reading_at, f.id LIMIT 1) AS last_error,
       min(o.next_attempt_at) FILTER (WHERE o.sent_at IS NULL) AS next_attempt_at
FROM push_outbox o;

-- The pipeline: work items waiting in Redis after the processor's last batch, the age of that
-- commit, and the lag: that age while work waits (0 when none does: an idle processor is no
-- lag).
CREATE OR REPLACE VIEW pipeline_lag AS
SELECT w.backlog, w.updated_at AS last_commit,
       extract(epoch FROM now() - w.updated_at) AS last_commit_age_s,
       CASE WHEN w.backlog > 0 THEN extract(epoch FROM now() - w.updated_at) ELSE 0 END
           AS lag_s
FROM worker_progress w
WHERE w.id = 1;

INSERT INTO schema_version (version) VALUES (5) ON CONFLICT (version) DO NOTHING;

-- Version 6: the publisher's installation id (Home Assistant over MQTT). One row, created once:
-- Home Assistant's unique ids, the device and the topics derive from it and the meter number
-- (services/energy_worker/programs/publisher/ha_discovery.py), so the entities survive restarts and meter renames.
-- A new database (a new installation) gets a new id, and with it new entities. The id must be
-- usable as one MQTT topic level and as a discovery node_id; 16 hex digits from md5 of random()
-- and the clock work on every PostgreSQL version.
CREATE TABLE IF NOT EXISTS installation (
    id          text        PRIMARY KEY CHECK (id ~ '^[A-Za-z0-9_-]{1,64}$'),
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX IF NOT EXISTS installation_one_row ON installation ((true));
INSERT INTO installation (id)
    SELECT substr(md5(random()::text || clock_timestamp()::text), 1, 16)
    WHERE NOT EXISTS (SELECT 1 FROM installation)
    ON CONFLICT DO NOTHING;

INSERT INTO schema_version (version) VALUES (6) ON CONFLICT (version) DO NOTHING;

-- Version 7: worker_settings (one threshold for a silent meter; see meter_silence).
INSERT INTO schema_version (version) VALUES (7) ON CONFLICT (version) DO NOTHING;

-- Version 8: fewer writes to the SD card (bench/README.md, "A day of SD-card writes").
-- No foreign keys on the tables written all day: the check of each inserted row locks the
-- meter's meter_metadata row, which is a WAL record of its own and, after every checkpoint, a
-- full image of that page. Only the processor and the pusher write these tables, and only for
-- configured meters, whose meter_metadata rows are never deleted.
DO $$
DECLARE
    fk record;
BEGIN
    FOR fk IN
        SELECT c.conrelid::regclass AS tbl, c.conname
        FROM pg_constraint c
        WHERE c.contype = 'f'
          AND c.conrelid IN (to_regclass('consumption'), to_regclass('meter_hourly_totals'),
                             to_regclass('meter_daily_totals'))
    LOOP
        EXECUTE format('ALTER TABLE %s DROP CONSTRAINT %I', fk.tbl, fk.conname);
    END LOOP;
END
$$;

-- The history keeps one B-tree index, (meter_no, cor_time_stamp): every query reads a meter's
-- rows by time, and the processor finds the row it moves there too. Each move changes the
-- row's time, so it adds an entry to every B-tree index: the one on `index` alone (the primary
-- key) cost a WAL record per move, and a page image per checkpoint. Numbers above a given one
-- (the pusher's rows written since its last pass) are found through a BRIN index, which a
-- move at the table's end does not write to. The sequence still numbers the rows uniquely.
DO $$
DECLARE
    pk record;
BEGIN
    FOR pk IN
        SELECT c.conname FROM pg_constraint c
        WHERE c.contype = 'p' AND c.conrelid = to_regclass('consumption')
    LOOP
        EXECUTE format('ALTER TABLE consumption DROP CONSTRAINT %I', pk.conname);
    END LOOP;
END
$$;
CREATE INDEX IF NOT EXISTS consumption_index_range ON consumption USING brin (index);

-- Tables of a few rows that every commit (or every pass of the pusher) updates: their updates
-- are HOT and prune their own page, so the defaults (vacuum and analyse after 50 changed rows:
-- every minute) would only write WAL and page images. Vacuumed and analysed about daily.
DO $$
BEGIN
    IF to_regclass('meter_status_stored') IS NULL THEN  -- (version 10: the same, renamed)
        ALTER TABLE meter_status SET (autovacuum_vacuum_threshold = 100000,
                                      autovacuum_analyze_threshold = 100000);
    END IF;
END
$$;
ALTER TABLE worker_progress SET (autovacuum_vacuum_threshold = 20000,
                                 autovacuum_analyze_threshold = 20000);
ALTER TABLE worker_epochs SET (autovacuum_vacuum_threshold = 20000,
                               autovacuum_analyze_threshold = 20000);
ALTER TABLE pusher_state SET (autovacuum_vacuum_threshold = 1000,
                              autovacuum_analyze_threshold = 1000);
-- The history: each commit moves a row of every meter that pulsed, and the default analyses
-- it after 50 changed rows plus 10 % of the table: every minute or two while it is young, each
-- time rewriting its statistics (pg_statistic, several kB of WAL). Its statistics hardly
-- change (PostgreSQL reads the newest time off the index where a query needs it).
ALTER TABLE consumption SET (autovacuum_analyze_threshold = 20000);

-- The processor's bookkeeping is one row: worker_progress holds the current epoch's last item
-- (services/energy_worker/adapters/sql/ingest.py), worker_epochs only the epochs before it.
INSERT INTO schema_version (version) VALUES (8) ON CONFLICT (version) DO NOTHING;

-- Version 9: a push says which meter each of its values is and the local day it stands for, so
-- the sheet's Apps Script (docs/google-apps-script/Code.gs) writes each meter into its own
-- column and each push once (its id: the installation's id and dedup_key). Recorded with the
-- readings: meter_nos in dataString's order, their names, and the day (a daily push's day, or
-- the local day of a request). Pushes recorded before, still unsent, get the meters configured
-- now where their number matches the values' (they were recorded in that order); the rest are
-- sent without meters, which the new script refuses with an ERROR (shown by status).
ALTER TABLE push_outbox ADD COLUMN IF NOT EXISTS day date;
ALTER TABLE push_outbox ADD COLUMN IF NOT EXISTS meter_nos integer[];
ALTER TABLE push_outbox ADD COLUMN IF NOT EXISTS meter_names text[];
UPDATE push_outbox SET day = CASE
        WHEN dedup_key LIKE 'day:%' THEN substr(dedup_key, 5)::date
        ELSE (reading_at AT TIME ZONE coalesce((SELECT tz FROM pusher_state WHERE id = 1),
                                               'UTC'))::date
    END
WHERE day IS NULL;
UPDATE push_outbox AS o SET meter_nos = m.nos, meter_names = m.names
FROM (SELECT array_agg(meter_no ORDER BY meter_no) AS nos,
             array_agg(meter_name ORDER BY meter_no) AS names, count(*) AS n
      FROM meter_metadata) m
WHERE o.sent_at IS NULL AND o.meter_nos IS NULL
  AND m.n = array_length(string_to_array(o.data_string, ','), 1);

INSERT INTO schema_version (version) VALUES (9) ON CONFLICT (version) DO NOTHING;

-- Version 10: a pulse that only moves its meter's latest history row writes nothing else
-- (bench/README.md, "A day of SD-card writes"). meter_status's per-pulse columns (meter_counts,
-- kWh, pulse_time_stamp, pulse_period, cor_time_stamp, pulses_counted, time_stamp) are, after
-- a counted pulse, what the meter's latest row (upper_index) holds; updating both wrote each
-- meter's state twice per commit. The table is now meter_status_stored, written only when
-- something the row does not hold changes (services/energy_worker/core/status.py), and
-- meter_status is a view with the same columns in the same order: the stored row, overlaid
-- with its latest row where that row has counted pulses the stored row has not (it moved
-- since; consumption.pulses only grows with them). Every reader reads meter_status as before.
-- The view is created once, with the rename: replacing it at every start would lock it
-- against its readers after this file has locked the history (ADD COLUMN above), the reverse of
-- their order, and deadlock with a reader in between. A later version that changes it replaces
-- it in a guarded block of its own.
DO $$
BEGIN
    IF to_regclass('meter_status_stored') IS NULL THEN
        ALTER TABLE meter_status RENAME TO meter_status_stored;
        CREATE VIEW meter_status AS
        SELECT s.upper_index, s.meter_no, s.reference_watt_consumption,
               CASE WHEN c.moved THEN c.meter_counts ELSE s.meter_counts END AS meter_counts,
               CASE WHEN c.moved THEN c.kwh ELSE s.kwh END AS kwh,
               CASE WHEN c.moved THEN c.pulse_time_stamp ELSE s.pulse_time_stamp END
                   AS pulse_time_stamp,
               CASE WHEN c.moved THEN c.pulse_period ELSE s.pulse_period END AS pulse_period,
               CASE WHEN c.moved THEN c.cor_time_stamp ELSE s.cor_time_stamp END
                   AS cor_time_stamp,
               CASE WHEN c.moved THEN c.time_stamp ELSE s.time_stamp END AS time_stamp,
               s.run_index,
               CASE WHEN c.moved THEN c.pulses ELSE s.pulses_counted END AS pulses_counted,
               s.pulses_repeated, s.pulses_rejected
        FROM meter_status_stored s
        LEFT JOIN LATERAL (
            -- The latest row, found from the meter's newest rows backwards on the
            -- (meter_no, cor_time_stamp) index: the history has no B-tree index on `index`
            -- alone, and `+ 0` keeps the planner off its BRIN index, whose bitmap would read
            -- the meter's whole history.
            SELECT h.meter_counts, h.kwh, h.pulse_time_stamp, h.pulse_period, h.cor_time_stamp,
                   h.time_stamp, h.pulses, coalesce(h.pulses > s.pulses_counted, false) AS moved
            FROM consumption h
            WHERE h.meter_no = s.meter_no AND h.index + 0 = s.upper_index
            ORDER BY h.meter_no DESC, h.cor_time_stamp DESC LIMIT 1
        ) c ON true;
    END IF;
END
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

INSERT INTO schema_version (version) VALUES (10) ON CONFLICT (version) DO NOTHING;
