"""The open-loop schedule that runs on the request engine's loop
(loadtest.engine_schedule), on a real asyncio loop: its rate, its end, the
tickets it hands to slots, and what a stop and a backlog give back."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from loadtest.engine_schedule import Schedule
from loadtest.recorder import LAG_PREFIX


class Slot:
    waiter: Any = None


async def _turn() -> None:
    """One turn of the loop (not a wait for time): a task just made runs up to its first await."""
    await asyncio.sleep(0)


def test_constant_rate_until_its_end_and_every_ticket_accounted() -> None:
    async def main() -> None:
        now = time.monotonic()
        sched = Schedule(1, "constant", 0, 10_000, now + 1.0, now)
        sched.set_rate(200.0, "infer", now)
        assert sched._task is not None
        await asyncio.wait_for(sched._task, 5.0)  # it ends by itself at `until`
        counts = sched.take_counts()
        assert counts is not None
        c, worst = counts
        # 1 s at 200/s, counted from the parent's time: 199 or 200 sends, none after the end.
        assert 199 <= c["scheduled"] <= 200, c
        lagged = sum(n for k, n in c.items() if k.startswith(LAG_PREFIX) or k == "lag_over_us")
        assert lagged == c["scheduled"], c
        assert worst >= 0
        # A slot takes the oldest ticket; a stop gives back the queued and the in-flight ones.
        slot = Slot()
        first = await sched.take(slot)
        assert first is not None and first[2] == "infer" and abs(first[1] - (now + 0.005)) < 1e-6
        left = sched.stop()
        assert len(left) == c["scheduled"]  # the one in flight included
        assert not sched.finish(first[0])  # reported unfinished: its result is not reported again

    asyncio.run(main())


def test_a_waiting_slot_is_woken_by_a_ticket_or_by_the_stop() -> None:
    async def main() -> None:
        now = time.monotonic()
        sched = Schedule(2, "poisson", 7, 5, now + 0.5, now)
        slot = Slot()
        waiting = asyncio.ensure_future(sched.take(slot))
        await _turn()
        assert not waiting.done() and slot.waiter is not None  # no rate yet: nothing scheduled
        sched.set_rate(200.0, "phase-a", time.monotonic())
        ticket = await asyncio.wait_for(waiting, 2.0)
        assert ticket is not None and ticket[2] == "phase-a"
        assert sched.finish(ticket[0]) and not sched.in_flight
        # Nobody takes tickets until the schedule's end: at most max_pending wait, the rest are dropped.
        assert sched._task is not None
        await asyncio.wait_for(sched._task, 5.0)
        assert sched.counts["dropped"] > 0 and len(sched.queue) == 5
        # Old tickets come out as the backlog; a stop wakes a waiting slot with None.
        old = sched.backlog(0.0)
        assert len(old) == 5 and not sched.queue
        waiting = asyncio.ensure_future(sched.take(slot))
        await _turn()
        assert sched.stop() == [] and await asyncio.wait_for(waiting, 1.0) is None

    asyncio.run(main())
