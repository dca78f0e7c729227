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

-- The original stored watts as SMALLINT and lost every pulse above 32767 W. Widen an existing
-- database of the original stack in place.
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM information_schema.columns
               WHERE table_schema = current_schema() AND table_name = 'consumption'
                 AND column_name = 'watt_consumption' AND data_type IN ('smallint', 'integer')) THEN
        ALTER TABLE consumption ALTER COLUMN watt_consumption TYPE bigint;
    END IF;
    IF EXISTS (SELECT 1 FROM information_schema.columns
               WHERE table_schema = current_schema() AND table_name = 'meter_status'
                 AND column_name = 'reference_watt_consumption'
                 AND data_type IN ('smallint', 'integer')) THEN
        ALTER TABLE meter_status ALTER COLUMN reference_watt_consumption TYPE bigint;
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

INSERT INTO schema_version (version) VALUES (1) ON CONFLICT (version) DO NOTHING;

-- Pusher (issue 4): meter_totals, hourly totals, push outbox
-- Written by services/energy_worker/pusher.py only. Totals are derived from consumption: a
-- meter's reading at a boundary is the kWh of its latest row at or before that instant, and the
-- pusher recomputes every hour and day whose history changed (late backlog, a moved deadband
-- row), so these tables always agree with consumption. Hours and days are local ones in the
-- pusher's TZ; the day summer time starts has 23 hours, the day it ends 25.
-- Long format (one row per period and meter) so Grafana draws one series per meter, e.g.
--   SELECT day_end AS time, meter_name AS metric, kWh_diff AS value
--   FROM meter_totals JOIN meter_metadata USING (meter_no) WHERE $__timeFilter(day_end)

-- One row per local day and meter: the reading at the day's end and the day's difference.
CREATE TABLE IF NOT EXISTS meter_totals (
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
CREATE INDEX IF NOT EXISTS meter_totals_day_end ON meter_totals (day_end);

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
