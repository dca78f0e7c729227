"""`energy-worker simulate`: Arduino-like pulses through the webhook's protocol, into the running
service, for a test or a demonstration without an Arduino.

Each meter is an Arduino input (docs/DOMAIN.md): a pulse every 3_600_000_000 / (W x pulses per
kWh) ms, stamped with a millis() clock (wrapping at 2^32), kept in a buffer of 5 and sent as the
webhook does: SET channel:<n>:timestamp <millis> NX, tried again while the key is still there.
A pulse that meets a full buffer is lost. A key counts as cleared once it no longer holds our
value; the time from the SET to then is its clear time (to the resolution of TICK_S).

The clock starts where a never-rebooted Arduino's would be (wall-clock ms, modulo 2^32), so the
first pulse's period from the meter's previous pulse is the real time between them; --powerup
restarts it at 0, as a reboot does, after sending `powerup`.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from decimal import Decimal

import redis

from energy_worker.cli.session import EXIT_ATTENTION, EXIT_OK, CliError, Session
from energy_worker.core import arithmetic
from energy_worker.core.domain import Meter

SLOTS = 5  # the Arduino's buffer per meter
WRAP = 2**32  # millis() wraps
TICK_S = 0.002  # how often keys in flight are looked at, and sends tried again
DRAIN_S = 10.0  # after the run: how long buffered pulses may take to be delivered
POWERUP_KEY = "powerup"


@dataclass
class Pulse:
    millis: int
    number: int  # 1, 2, ... within the run, per meter
    repeat: bool = False  # the second sending of the same millis


@dataclass
class Input:
    """One meter's input of the simulated Arduino."""

    meter: Meter
    watts: int
    period_ms: float
    key: str
    first_at: float  # monotonic seconds of the first pulse; pulse k comes k periods later
    clock_origin: int  # millis() of pulse origin_k: the clock is exact to the period
    origin_k: int = 0
    made: int = 0
    sent: int = 0  # pulses delivered (first sendings)
    repeats: int = 0  # second sendings delivered
    lost: int = 0  # met a full buffer
    lost_reboot: int = 0  # in the buffer when the Arduino restarted
    buffer: deque[Pulse] = field(default_factory=deque)
    in_flight: Pulse | None = None
    in_flight_since: float = 0.0


def period_ms(watts: int, pulses_per_kwh: int) -> float:
    """Time between pulses at this power (docs/DOMAIN.md)."""
    return arithmetic.WATT_MS_PER_KWH / (watts * pulses_per_kwh)


def pulses_in(duration_s: float, period: float) -> int:
    """Pulses made in a run: one at its start, then one per period before its end."""
    return math.ceil(duration_s * 1000 / period)


def percentile(values: list[float], q: float) -> float | None:
    """The q-quantile (nearest rank) of the values; None for none."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(max(math.ceil(q * len(ordered)) - 1, 0), len(ordered) - 1)]


def powers_for(meters: list[int], powers: list[int]) -> list[int]:
    if len(powers) == 1:
        return powers * len(meters)
    if len(powers) != len(meters):
        raise CliError(
            f"--power names {len(powers)} powers for {len(meters)} meters: give one for all, "
            "or one per meter"
        )
    return powers


class Arduino:
    """The simulated Arduino with its inputs, driving the webhook's protocol."""

    def __init__(self, r: redis.Redis, inputs: list[Input], repeat: int) -> None:
        self.r = r
        self.inputs = inputs
        self.repeat = repeat
        self.clear_ms: list[float] = []
        self.paused = False  # after a restart, until `powerup` is taken
        self.interrupted = False

    @staticmethod
    def due(put: Input) -> float:
        return put.first_at + put.made * put.period_ms / 1000

    def make_pulses(self, now: float, until: float) -> None:
        for put in self.inputs:
            while (at := self.due(put)) <= now and at < until:
                millis = put.clock_origin + round((put.made - put.origin_k) * put.period_ms)
                put.made += 1
                if len(put.buffer) >= SLOTS:
                    put.lost += 1
                else:
                    put.buffer.append(Pulse(millis % WRAP, put.made))

    def look_at_flights(self) -> None:
        """Which keys in flight the service has taken (they no longer hold our value)."""
        flying = [put for put in self.inputs if put.in_flight is not None]
        if not flying:
            return
        pipe = self.r.pipeline(transaction=False)
        for put in flying:
            pipe.get(put.key)
        values = pipe.execute()
        now = time.monotonic()
        for put, value in zip(flying, values, strict=True):
            pulse = put.in_flight
            assert pulse is not None
            if value == str(pulse.millis).encode():
                continue
            self.clear_ms.append((now - put.in_flight_since) * 1000)
            put.in_flight = None
            if pulse.repeat:
                put.repeats += 1
            else:
                put.sent += 1
                if self.repeat and pulse.number % self.repeat == 0:
                    # a flaky Arduino: it takes the answer for a failure and sends it again
                    put.buffer.appendleft(Pulse(pulse.millis, pulse.number, repeat=True))

    def send(self) -> None:
        if self.paused:
            return
        ready = [put for put in self.inputs if put.in_flight is None and put.buffer]
        if not ready:
            return
        pipe = self.r.pipeline(transaction=False)
        for put in ready:
            pipe.set(put.key, str(put.buffer[0].millis), nx=True)
        answers = pipe.execute()
        now = time.monotonic()
        for put, ok in zip(ready, answers, strict=True):
            if ok:  # else "102 Processing": the key is still there; try again next tick
                put.in_flight = put.buffer.popleft()
                put.in_flight_since = now

    def restart(self) -> None:
        """The Arduino reboots: its buffers are gone, and millis() starts again at 0 once it
        has said `powerup` (sent before any new pulse, as the Arduino does)."""
        now = time.monotonic()
        for put in self.inputs:
            put.lost_reboot += len(put.buffer)
            put.buffer.clear()
            put.clock_origin = max(round((self.due(put) - now) * 1000), 0)
            put.origin_k = put.made
        self.paused = True

    def idle(self) -> bool:
        return all(put.in_flight is None and not put.buffer for put in self.inputs)


def run(args: argparse.Namespace, session: Session) -> int:
    if args.repeat < 0:
        raise CliError("--repeat must be 0 (off) or more")
    if args.powerup is not None and not 0 <= args.powerup < args.duration:
        raise CliError(f"--powerup must be a time within the run (0 to {args.duration:g} s)")
    meters = [session.meter(number) for number in args.meters]
    powers = powers_for(args.meters, args.power)
    for m, watts in zip(meters, powers, strict=True):
        if period_ms(watts, m.pulses_per_kwh) < 1:
            raise CliError(f"{watts} W is more than meter {m.number} can pulse (1 pulse per ms)")
    r = session.redis()
    warn(meters, powers, args.duration)

    inputs = []
    start = time.monotonic()
    wall_ms = time.time() * 1000  # an Arduino that never rebooted: millis() is wall time
    for i, (m, watts) in enumerate(zip(meters, powers, strict=True)):
        period = period_ms(watts, m.pulses_per_kwh)
        key = f"channel:{m.number}:timestamp"
        first = start + i * 0.013  # the meters slightly out of phase, as real ones are
        origin = round(wall_ms + (first - start) * 1000) % WRAP
        inputs.append(Input(m, watts, period, key, first, origin))
    arduino = Arduino(r, inputs, args.repeat)
    end = start + args.duration
    restart_at = None if args.powerup is None else start + args.powerup
    powerup_sent = powerup_taken = None
    next_report = start + 1.0
    try:
        while True:
            now = time.monotonic()
            if restart_at is not None and now >= restart_at:
                arduino.restart()
                restart_at = None
            if arduino.paused:  # say powerup as the webhook writes it; wait until it is taken
                if powerup_sent is None:
                    powerup_sent = now if r.set(POWERUP_KEY, "true", nx=True) else None
                elif not r.exists(POWERUP_KEY):
                    powerup_taken = now
                    arduino.paused = False
            arduino.make_pulses(now, end)
            arduino.look_at_flights()
            arduino.send()
            if now >= next_report:
                progress(arduino, now - start, args.duration)
                next_report += 1.0
            if now >= end and arduino.idle() and not arduino.paused:
                break
            if now >= end + DRAIN_S:
                break
            time.sleep(TICK_S)
    except KeyboardInterrupt:  # Ctrl-C: say what was sent so far
        print("\ninterrupted")
        arduino.interrupted = True
    return report(arduino, time.monotonic() - start, powerup_sent, powerup_taken, start)


def warn(meters: list[Meter], powers: list[int], duration: float) -> None:
    adds = ", ".join(
        f"meter {m.number} about "
        f"+{pulses_in(duration, period_ms(w, m.pulses_per_kwh)) / Decimal(m.pulses_per_kwh)} kWh"
        for m, w in zip(meters, powers, strict=True)
    )
    print(
        f"WARNING: simulated pulses count on the real meters, like real ones ({adds}). Type the "
        "readings in again afterwards if they matter (energy-worker set-reading).",
        file=sys.stderr,
        flush=True,
    )
    for m, w in zip(meters, powers, strict=True):
        note = f" (above its maximum of {m.max_power_w} W: not stored as power)"
        print(
            f"meter {m.number} ({m.name}): {w} W, a pulse every "
            f"{period_ms(w, m.pulses_per_kwh):.0f} ms"
            f"{note if w > m.max_power_w else ''}",
            flush=True,
        )


def progress(arduino: Arduino, elapsed: float, duration: float) -> None:
    sent = sum(p.sent + p.repeats for p in arduino.inputs)
    lost = sum(p.lost + p.lost_reboot for p in arduino.inputs)
    waiting = sum(len(p.buffer) + (p.in_flight is not None) for p in arduino.inputs)
    print(
        f"{min(elapsed, duration):5.0f} s  sent {sent}, lost {lost}, waiting {waiting}",
        flush=True,
    )


def report(
    arduino: Arduino,
    elapsed: float,
    powerup_sent: float | None,
    powerup_taken: float | None,
    start: float,
) -> int:
    from energy_worker.cli import show  # noqa: PLC0415 - light; only the report needs it

    rows = []
    for put in arduino.inputs:
        added = Decimal(put.sent) / Decimal(put.meter.pulses_per_kwh)
        rows.append(
            [
                str(put.meter.number),
                f"{put.watts} W",
                f"{put.period_ms:.0f} ms",
                str(put.made),
                str(put.sent),
                str(put.repeats),
                str(put.lost + put.lost_reboot),
                f"+{show.kwh(added, put.meter.pulses_per_kwh)}",
            ]
        )
    print()
    print(
        show.table(
            ["meter", "power", "every", "made", "sent", "repeats", "lost", "kWh"],
            rows,
            [True, True, True, True, True, True, True, True],
        )
    )
    if powerup_sent is not None:
        taken = "" if powerup_taken is None else " and taken"
        print(f"powerup sent{taken} {powerup_sent - start:.1f} s into the run")
    p50, p99 = percentile(arduino.clear_ms, 0.5), percentile(arduino.clear_ms, 0.99)
    if p50 is not None and p99 is not None:
        print(
            f"keys cleared after p50 {p50:.1f} ms, p99 {p99:.1f} ms "
            f"({len(arduino.clear_ms)} keys, {elapsed:.1f} s)"
        )
    problems = []
    lost = sum(p.lost for p in arduino.inputs)
    if lost:
        problems.append(f"{lost} lost: the buffer of {SLOTS} was full")
    rebooted = sum(p.lost_reboot for p in arduino.inputs)
    if rebooted:
        problems.append(f"{rebooted} buffered at the restart (lost, as in a real reboot)")
    unsent = sum(len(p.buffer) for p in arduino.inputs)
    if unsent:
        why = "interrupted" if arduino.interrupted else f"not within {DRAIN_S:g} s after the run"
        problems.append(f"{unsent} still in the buffer, not sent ({why})")
    waiting = sum(p.in_flight is not None for p in arduino.inputs)
    if waiting:
        problems.append(
            f"{waiting} key{'s' if waiting > 1 else ''} not yet taken by the service (is it "
            "running?): counted when it takes them"
        )
    if problems:
        print("Not every pulse arrived: " + "; ".join(problems) + ".")
        return EXIT_ATTENTION
    total = sum(p.sent for p in arduino.inputs)
    repeats = sum(p.repeats for p in arduino.inputs)
    extra = f" (and {repeats} sent twice: counted once)" if repeats else ""
    print(f"All {total} pulses delivered{extra}.")
    return EXIT_OK
