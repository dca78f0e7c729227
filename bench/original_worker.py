"""The original stack's worker, as the benchmark runs it beside energy-worker: a model of what
it sends to Redis and PostgreSQL, written from docs/DOMAIN.md and the original's documentation
(its code is not in this repository).

Its loop, ten times a second: KEYS *, then for each key a GET; a pulse key runs the pulse
handler, then the key is deleted. The handler opens a new connection for each statement and
commits it alone (psycopg2's habit: the original's pg* modules each connect, run one statement,
commit and close): the database's time, the meter's metadata, the meter's status, then an
INSERT or UPDATE of the history (its deadband: a new row when the power leaves the band around
the run's first row, else the run's second row is inserted once and updated after that), and
the UPDATE of meter_status. Its tables are the original's: SMALLINT watts, float kWh, a
foreign key from the history and the status to meter_metadata.

    python bench/original_worker.py REDIS_PORT PG_PORT DATABASE
"""

from __future__ import annotations

import signal
import sys
import time

import pg8000.native
import redis

METERS = 7
PULSES_PER_KWH = 1000
MAX_WATT = 17250
DEVIATION_PCT = 5
POLL_S = 0.1  # the original slept 100 ms between two KEYS *

TABLES = (
    """CREATE TABLE meter_metadata (
        meter_no smallserial PRIMARY KEY, meter_name varchar(255) NOT NULL,
        pulse_per_kWh smallint NOT NULL, max_energy smallint NOT NULL,
        power_factor decimal NOT NULL, deviation_pct smallint NOT NULL)""",
    """CREATE TABLE meter_status (
        upper_index bigint NOT NULL, meter_no smallint NOT NULL,
        reference_watt_consumption smallint NOT NULL, meter_counts integer NOT NULL,
        kWh decimal NOT NULL, pulse_time_stamp bigint NOT NULL, pulse_period bigint NOT NULL,
        cor_time_stamp timestamp NOT NULL, time_stamp timestamp NOT NULL,
        PRIMARY KEY (meter_no),
        FOREIGN KEY (meter_no) REFERENCES meter_metadata (meter_no)
            ON UPDATE CASCADE ON DELETE CASCADE)""",
    """CREATE TABLE consumption (
        index bigserial PRIMARY KEY, meter_no smallint NOT NULL,
        watt_consumption smallint NOT NULL, meter_counts integer NOT NULL,
        kWh decimal NOT NULL, pulse_time_stamp bigint NOT NULL, pulse_period bigint NOT NULL,
        cor_time_stamp timestamp NOT NULL, time_stamp timestamp NOT NULL,
        FOREIGN KEY (meter_no) REFERENCES meter_metadata (meter_no)
            ON UPDATE CASCADE ON DELETE CASCADE)""",
)


class Database:
    def __init__(self, port: int, database: str) -> None:
        self.port = port
        self.database = database

    def connect(self) -> pg8000.native.Connection:
        return pg8000.native.Connection(
            user="postgres", host="127.0.0.1", port=self.port, database=self.database
        )

    def one(self, sql: str, **params: object) -> list[list[object]]:
        """One statement on a connection of its own, committed alone."""
        con = self.connect()
        try:
            return con.run(sql, **params)
        finally:
            con.close()

    def create(self) -> None:
        con = self.connect()
        try:
            if con.run("SELECT to_regclass('meter_status')")[0][0] is not None:
                return
            con.run("BEGIN")
            for table in TABLES:
                con.run(table)
            for no in range(1, METERS + 1):
                con.run(
                    "INSERT INTO meter_metadata VALUES (:no, :name, :ppk, :max, 1.0, :dev)",
                    no=no, name=f"Meter {no}", ppk=PULSES_PER_KWH, max=MAX_WATT,
                    dev=DEVIATION_PCT,
                )  # fmt: skip
                con.run(
                    "INSERT INTO meter_status VALUES (0, :no, 0, 0, 0, 0, -1, now(), now())",
                    no=no,
                )
            con.run("COMMIT")
        finally:
            con.close()


def pulse(db: Database, meter_no: int, millis: int) -> None:
    (now,) = db.one("SELECT now()::timestamp")[0]
    _, _, ppk, max_watt, _, dev = db.one(
        "SELECT * FROM meter_metadata WHERE meter_no = :m", m=meter_no
    )[0]
    upper, _, ref, counts, _, last_millis, period, cor, _ = db.one(
        "SELECT * FROM meter_status WHERE meter_no = :m", m=meter_no
    )[0]
    counts = int(counts) + 1
    kwh = f"{counts / ppk}"  # the original's float division, as text for the decimal column
    if period >= 0:
        previous = period
        period = (millis - last_millis) % 2**32
        if period > 0:
            watt = int(3_600_000 / period / ppk * 1000)
            row = dict(m=meter_no, w=watt, c=counts, k=kwh, t=millis, p=period, cor=cor, now=now)
            if watt < max_watt and abs(ref - watt) > ref / 100 * dev:
                db.one(INSERT, **row)
                upper, ref = 0, watt
            elif upper == 0:
                upper = db.one(INSERT, **row)[0][0]
            else:
                db.one(
                    """UPDATE consumption SET watt_consumption = :w, meter_counts = :c,
                       kWh = :k, pulse_time_stamp = :t, pulse_period = :p,
                       cor_time_stamp = :cor, time_stamp = :now WHERE index = :i""",
                    i=upper, **row,
                )  # fmt: skip
        else:
            period = previous
    else:
        period = 0
    db.one(
        """UPDATE meter_status SET upper_index = :u, reference_watt_consumption = :r,
           meter_counts = :c, kWh = :k, pulse_time_stamp = :t, pulse_period = :p,
           cor_time_stamp = :cor, time_stamp = :now WHERE meter_no = :m""",
        u=upper, r=ref, c=counts, k=kwh, t=millis, p=period, cor=cor, now=now, m=meter_no,
    )  # fmt: skip


INSERT = """INSERT INTO consumption (meter_no, watt_consumption, meter_counts, kWh,
            pulse_time_stamp, pulse_period, cor_time_stamp, time_stamp)
            VALUES (:m, :w, :c, :k, :t, :p, :cor, :now) RETURNING index"""


def main() -> int:
    redis_port, pg_port, database = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    r = redis.Redis(host="127.0.0.1", port=redis_port)
    db = Database(pg_port, database)
    db.create()
    print("original worker: connected; entering its loop", flush=True)
    while True:
        for key in r.keys("*"):
            value = r.get(key)
            name = key.decode()
            if "timestamp" in name and value is not None:
                pulse(db, int(name.split(":")[1]), int(value))
            r.delete(key)
        time.sleep(POLL_S)


if __name__ == "__main__":
    sys.exit(main())
