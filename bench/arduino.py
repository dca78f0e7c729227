"""The webhook's side of the protocol, as the Arduinos drive it.

Each meter is an Arduino with a 5-slot buffer: a pulse is stamped with millis() and queued; the
oldest queued pulse is written with SET NX, tried again every 10 ms while the meter's key still
exists ("102 Processing"); a pulse that meets a full buffer is lost. The key-clear latency is
the time from the SET to the key's deletion, heard as a keyspace event (generic `del` events
must be on).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import time
from collections.abc import Awaitable
from dataclasses import dataclass, field

import redis.asyncio as aredis

ARDUINO_SLOTS = 5
RETRY_S = 0.010  # how soon the Arduino tries again after "102 Processing"
CLEAR_TIMEOUT = 30.0  # seconds the last keys may take to be cleared after the run


@dataclass
class MeterLoad:
    number: int
    generated: int = 0
    lost: int = 0
    delivered: int = 0
    buffer: collections.deque[int] = field(default_factory=collections.deque)


@dataclass
class LoadResult:
    rate: float
    meters: int
    duration: float
    generated: int
    lost: int
    delivered: int
    latencies_ms: list[float]
    uncleared: int  # keys whose deletion was never heard

    def pct(self, q: float) -> float:
        if not self.latencies_ms:
            return float("nan")
        ordered = sorted(self.latencies_ms)
        return ordered[min(int(q * len(ordered)), len(ordered) - 1)]

    @property
    def lost_pct(self) -> float:
        return 100 * self.lost / max(self.generated, 1)

    def summary(self) -> dict[str, float | int]:
        return {
            "rate_per_meter": self.rate,
            "meters": self.meters,
            "seconds": self.duration,
            "generated": self.generated,
            "lost": self.lost,
            "lost_pct": round(self.lost_pct, 3),
            "delivered": self.delivered,
            "p50_ms": round(self.pct(0.50), 3),
            "p99_ms": round(self.pct(0.99), 3),
            "uncleared": self.uncleared,
        }


async def drive(
    port: int,
    rate: float,
    duration: float,
    meters: int,
    meanwhile: Awaitable[None] | None = None,
    db: int = 0,
) -> LoadResult:
    """Arduinos at `rate` pulses/s per meter for `duration` s against the Redis at `port`;
    `meanwhile` runs alongside (a fault's timeline)."""
    r = aredis.Redis(host="127.0.0.1", port=port, db=db)
    listener = aredis.Redis(host="127.0.0.1", port=port, db=db)
    pubsub = listener.pubsub()
    await pubsub.subscribe(f"__keyevent@{db}__:del")
    sent_at: dict[bytes, float] = {}
    latencies: list[float] = []
    all_cleared = asyncio.Event()
    sending = True

    async def hear_deletions() -> None:
        async for message in pubsub.listen():
            if message["type"] == "message" and message["data"] in sent_at:
                latencies.append((time.perf_counter() - sent_at.pop(message["data"])) * 1000)
                if not sent_at and not sending:
                    all_cleared.set()

    loads = [MeterLoad(n) for n in range(1, meters + 1)]
    start = time.perf_counter()

    async def arduino(load: MeterLoad) -> None:
        key = f"channel:{load.number}:timestamp".encode()
        interval = 1 / rate
        next_pulse = start + interval * (load.number / meters)  # meters out of phase
        end = start + duration
        while True:
            now = time.perf_counter()
            while next_pulse <= now and next_pulse < end:
                load.generated += 1
                if len(load.buffer) >= ARDUINO_SLOTS:
                    load.lost += 1  # the buffer is full: this pulse is gone for good
                else:
                    load.buffer.append(int((next_pulse - start) * 1000) + 1000)
                next_pulse += interval
            if load.buffer and key not in sent_at:
                # Registered before the SET: the worker may delete the key (and its event be
                # heard) before the SET's own answer arrives.
                sent_at[key] = time.perf_counter()
                if await r.set(key, str(load.buffer[0]), nx=True):
                    load.buffer.popleft()
                    load.delivered += 1
                    continue
                sent_at.pop(key, None)  # "102 Processing": the key is still there
            if next_pulse >= end and not load.buffer:
                return
            await asyncio.sleep(min(RETRY_S, max(next_pulse - time.perf_counter(), 0)))

    hearing = asyncio.create_task(hear_deletions())
    try:
        await asyncio.gather(
            *(arduino(load) for load in loads), *([meanwhile] if meanwhile else [])
        )
        sending = False
        if sent_at:
            # Timing out leaves them counted as uncleared; the caller's checks then fail.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(all_cleared.wait(), CLEAR_TIMEOUT)
    finally:
        hearing.cancel()
        await pubsub.aclose()
        await listener.aclose()
        await r.aclose()
    return LoadResult(
        rate,
        meters,
        duration,
        sum(load.generated for load in loads),
        sum(load.lost for load in loads),
        sum(load.delivered for load in loads),
        latencies,
        len(sent_at),
    )
