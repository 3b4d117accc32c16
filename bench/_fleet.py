"""N simulated Locust workers in one process, speaking Locust's own protocol.

Each worker is a zmq DEALER socket with a worker's identity, sending what
Locust's WorkerRunner sends (locust/runners.py): `client_ready` with the Locust
version, a heartbeat a second, `spawning` / `spawning_complete` for each spawn
message, a `stats` report every WORKER_REPORT_INTERVAL with our plugin's blob,
the answer to the plugin's flush request, `client_stopped` / `client_ready`
on stop and a last report and `quit` on quit. Messages are Locust's
`rpc.protocol.Message`, serialized by Locust's own code.

Report latency: a worker sends a heartbeat right after each report (Locust's
heartbeat and report loops start together, so one heartbeat in three does so
anyway); the master handles a worker's messages in order, so the reply to that
heartbeat comes once the report has been processed.
"""

from __future__ import annotations

import asyncio
import random
import socket
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import zmq
import zmq.asyncio
from locust import __version__ as LOCUST_VERSION
from locust.rpc.protocol import Message
from locust.runners import HEARTBEAT_INTERVAL, WORKER_REPORT_INTERVAL

from bench._reports import Profile, heartbeat, stats_message
from loadtest.plugin import ACK_MESSAGE, FINAL_MESSAGE, FLUSH_MESSAGE
from loadtest.run import PHASE_MESSAGE


@dataclass
class FleetStats:
    """What the fleet saw of the master."""

    reports: int = 0
    latencies_ms: list[tuple[float, float]] = field(default_factory=list)  # (t since start, ms)
    spawned: int = 0
    flushed: int = 0
    final_requests: dict[str, int] = field(default_factory=dict)  # worker -> cumulative OK requests
    quit: int = 0
    bytes_sent: int = 0


class Fleet:
    """The shared state of the simulated workers: run identity, profiles, counts."""

    def __init__(
        self, n: int, port: int, profiles: list[Profile], interval_s: float = WORKER_REPORT_INTERVAL
    ):
        self.n = n
        self.port = port
        self.profiles = profiles
        self.interval_s = interval_s
        self.stats = FleetStats()
        self.run_id = ""
        self.token = ""
        self.started = time.monotonic()
        self.measuring = True
        self._blobs: dict[tuple[int, int, int], str] = {}
        self.ctx = zmq.asyncio.Context()

    def blob(self, profile: int, k: int, acked: int) -> str:
        """The packed plugin state of report k of a profile, for a worker whose
        deltas are acknowledged up to `acked` (packed once, sent by many)."""
        key = (profile, k, acked)
        if key not in self._blobs:
            prof = self.profiles[profile]
            rep = prof.report(k, self.run_id, self.token)
            self._blobs[key] = rep.blob(acked, prof.reports[max(0, k - 30) : k + 1])
            # The workers of a profile are within a report of each other.
            for old in [b for b in self._blobs if b[0] == profile and b[1] < k - 2]:
                del self._blobs[old]
        return self._blobs[key]

    async def run(self, until: asyncio.Event) -> None:
        workers = [Worker(self, i) for i in range(self.n)]
        await asyncio.gather(*(w.main(until) for w in workers))
        self.ctx.term()


class Worker:
    def __init__(self, fleet: Fleet, index: int) -> None:
        self.fleet = fleet
        self.id = f"{socket.gethostname()}_{uuid.uuid4().hex}"
        self.profile = index % len(fleet.profiles)
        self.sock = fleet.ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.IDENTITY, self.id.encode())
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.connect(f"tcp://127.0.0.1:{fleet.port}")
        self.state = "ready"
        self.users = 0
        self.k = -1  # the last report sent in this run
        self.in_run = False
        self.stopped = False
        self.acked = 0  # the last histogram delta the master acknowledged
        self.connected = asyncio.Event()
        self.done = asyncio.Event()
        self.pending: deque[float | None] = deque()  # per heartbeat sent: the report's send time, or None
        self.rng = random.Random(index)

    async def send(self, kind: str, data: Any) -> None:
        raw = Message(kind, data, self.id).serialize()
        self.fleet.stats.bytes_sent += len(raw)
        await self.sock.send(raw)

    async def main(self, until: asyncio.Event) -> None:
        await self.send("client_ready", LOCUST_VERSION)
        receiver = asyncio.create_task(self.receive())
        await self.connected.wait()
        ticker = asyncio.create_task(self.tick())
        stop = asyncio.create_task(until.wait())
        await asyncio.wait([asyncio.create_task(self.done.wait()), stop], return_when=asyncio.FIRST_COMPLETED)
        for task in (ticker, receiver, stop):
            task.cancel()
        self.sock.close()

    def _blob(self) -> str:
        if not self.in_run or not self.fleet.token:
            return ""
        return self.fleet.blob(self.profile, self.k, self.acked)

    async def report(self) -> None:
        # A stopped worker's recorder stands still: its reports repeat the last state.
        if self.in_run and self.fleet.token and not self.stopped:
            self.k += 1
            rep = self.fleet.profiles[self.profile].report(self.k, self.fleet.run_id, self.fleet.token)
        else:
            rep = None
        await self.send("stats", stats_message(rep, self.users, self._blob()))
        self.fleet.stats.reports += 1

    async def beat(self, after_report: float | None) -> None:
        cpu = self.fleet.profiles[self.profile].cpu_mean
        await self.send("heartbeat", heartbeat(self.state, cpu, 150_000_000))
        self.pending.append(after_report)

    async def tick(self) -> None:
        """Heartbeats every second, a report every interval, at this worker's own phase."""
        await asyncio.sleep(self.rng.uniform(0.0, self.fleet.interval_s))
        per_report = max(1, round(self.fleet.interval_s / HEARTBEAT_INTERVAL))
        n = 0
        next_at = time.monotonic()
        while True:
            if n % per_report == 0:
                await self.report()
                await self.beat(time.monotonic())
            else:
                await self.beat(None)
            n += 1
            next_at += HEARTBEAT_INTERVAL * (self.fleet.interval_s / per_report)
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))

    async def receive(self) -> None:
        while True:
            msg = Message.unserialize(await self.sock.recv())
            await self.handle(msg)

    async def handle(self, msg: Message) -> None:
        fleet = self.fleet
        if msg.type == "ack":
            self.connected.set()
        elif msg.type == "heartbeat":
            sent = self.pending.popleft() if self.pending else None
            if sent is not None and fleet.measuring:
                now = time.monotonic()
                fleet.stats.latencies_ms.append((now - fleet.started, (now - sent) * 1000.0))
        elif msg.type == "spawn":
            await self.send("spawning", None)
            if not self.in_run:
                self.in_run, self.k, self.acked = True, -1, 0  # the worker's test_start: a new run
            self.users = sum(msg.data["user_classes_count"].values())
            self.state = "running"
            await self.send("spawning_complete", {"user_classes_count": msg.data["user_classes_count"],
                                                  "user_count": self.users})  # fmt: skip
            fleet.stats.spawned += 1
        elif msg.type == ACK_MESSAGE:
            if msg.data["token"] == fleet.token:
                self.acked = max(self.acked, int(msg.data["seq"]))
        elif msg.type == PHASE_MESSAGE:
            fleet.run_id, fleet.token = msg.data["run_id"], msg.data["token"]
        elif msg.type == FLUSH_MESSAGE:
            self.k += 1  # what it measured since its last report
            rep = fleet.profiles[self.profile].report(self.k, fleet.run_id, fleet.token)
            # It measures no more (a real worker goes on until quit, and its
            # last report may land after the summary): the summary must then
            # equal the sum of the final reports exactly.
            self.stopped = True
            await self.send(FINAL_MESSAGE, {"modelsoak": self._blob()})
            fleet.stats.final_requests[self.id] = rep.requests
            fleet.stats.flushed += 1
        elif msg.type == "stop":
            self.state, self.users = "stopped", 0
            await self.send("client_stopped", None)
            await self.send("client_ready", LOCUST_VERSION)
            self.state, self.stopped = "ready", True
        elif msg.type == "quit":
            await self.send("stats", stats_message(None, 0, self._blob()))
            await self.send("quit", None)
            fleet.stats.quit += 1
            self.done.set()
