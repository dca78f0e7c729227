"""`energy-worker push`: a Google Sheet push now, as the webhook's `pushtogoogle` key asks for
one, and its outcome.

The request's way: the router moves the key onto energy-worker:push, the pusher records it in
the outbox (push_outbox, dedup_key 'request:<epoch>:<seq>', committed before it leaves
energy-worker:push-processing) and sends it after any older unsent push. A pusher without
GOOGLE_WEBHOOK_URL drops requests without recording them: the request has left both lists
and no outbox row came of it.
"""

from __future__ import annotations

import argparse
import time

import redis

from energy_worker.adapters.sql import reports
from energy_worker.adapters.work_queue import PUSH, PUSH_PROCESSING
from energy_worker.cli import send, show
from energy_worker.cli.session import EXIT_ATTENTION, EXIT_OK, CliError, Session

KEY = "pushtogoogle"
POLL_S = 0.1


def run(args: argparse.Namespace, session: Session) -> int:
    r = session.redis()
    con = session.postgres()
    before = reports.last_push_id(con)
    deadline = time.monotonic() + args.timeout
    if not send.send(r, KEY, "true", args.timeout):
        return failed(f"the {KEY} key stayed in Redis for {args.timeout:g} s: is the router up?")
    print("Push requested; waiting for the Google Sheet's answer ...", flush=True)
    while True:
        push = reports.request_after(con, before)
        if push is not None:
            if push.sent_at is not None:
                print(f"Pushed: the sheet answered HTTP {push.status_code} ({push.data_string}).")
                return EXIT_OK
            if push.last_error:
                return failed(
                    f"the push failed: {push.last_error} (the service tries again at "
                    f"{show.iso(push.next_attempt_at)}, after {push.attempts} attempt(s))"
                )
        elif handled(r) and reports.request_after(con, before) is None:
            return failed(ignored(session))
        if time.monotonic() > deadline:
            return failed(timed_out(session, push, args.timeout))
        time.sleep(POLL_S)


def handled(r: redis.Redis) -> bool:
    """No request waits in Redis: the key is gone, and neither push list holds an item (read
    in one transaction: the pusher moves items between the two atomically)."""
    pipe = r.pipeline(transaction=True)
    pipe.exists(KEY)
    pipe.llen(PUSH)
    pipe.llen(PUSH_PROCESSING)
    return not any(pipe.execute())


def ignored(session: Session) -> str:
    seen = "" if session.env.get("GOOGLE_WEBHOOK_URL") else ", nor in this command's environment"
    restart = "stop `make run` and start it again" if session.found else "docker compose up -d"
    return (
        "the service ignored the request: GOOGLE_WEBHOOK_URL is not set for it"
        f"{seen} (set it in .env, then {restart}; see docs/GUIDE.md)"
    )


def timed_out(session: Session, push: reports.PushRow | None, timeout: float) -> str:
    if push is None:
        return f"no push was recorded within {timeout:g} s: is the pusher running?"
    ahead, first = reports.pending_before(session.postgres(), push)
    if ahead and first is not None:
        error = f" (the oldest fails: {first.last_error})" if first.last_error else ""
        return (
            f"not sent within {timeout:g} s: {ahead} older push{'es' if ahead > 1 else ''} "
            f"wait{'s' if ahead == 1 else ''} to be sent first{error}"
        )
    return f"not answered within {timeout:g} s; the service keeps trying"


def failed(reason: str) -> int:
    """The push did not reach the sheet: one line, exit status 1."""
    raise CliError(reason, EXIT_ATTENTION)
