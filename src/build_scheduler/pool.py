"""One pool's queue and workers, as a pure state machine.

Nothing here does I/O or reads the time itself: the clock is passed in, and
the RPC layer turns what the methods return into replies. That keeps the
policy testable with a fake clock and compared by readable snapshots.

Order (fair share, start-time fair queueing). Each client has a rate, 1
unless set. A submitted job is tagged with the point its client's share
allows it to start: the later of the pool's virtual time (the tag of the
latest job started; on an idle pool, the latest client's tag) and the
client's previous tag plus that job's cost over the rate. Waiting jobs
leave in tag order, so a client that submits a burst spaces its own jobs
out and delays only itself, while a client that submits now and then finds
its job near the head of the queue. Virtual time moves with the jobs
started, not with the clock, so a client that kept many idle workers busy
is not held back for it later. Urgent jobs go before every normal one, but
are tagged the same way, so they use up their client's share too. A job is
charged its expected cost, never less than the pool measured whatever the
client's estimate; when it ends its client is charged what all its attempts
really took instead, and a job cancelled in the queue gives the charge
back. A job whose worker was lost goes back ahead of everything.

Placement (cache affinity with bounded load). A worker that was handed a
job with a cache hint counts as holding that hint's layers for
``hint_ttl`` seconds after its last such job, or until it reports that it
pruned its cache. A job with a hint goes, in order of preference:

1. to a free slot of a worker holding the hint;
2. if every such worker is busy, into the queue of the one expected to be
   free first, if that wait is under the bound: the time a cached build is
   expected to save over an uncached one, and never more than
   ``max_affinity_wait`` seconds; a job that has waited there that long
   (its worker's build overran) goes back to the pool, and waits for no
   worker again;
3. otherwise to the least loaded free worker, which from then on holds the
   hint too.

A job with no hint goes to the free slot that has waited longest. Expected
waits come from the learned costs (:mod:`build_scheduler.costs`): what is
left of each running job's expected duration plus the jobs in the worker's
queue, over its capacity.

Workers. A worker asks for work once per free slot; a slot that finds
nothing waits. A paused worker's slots get nothing, and its queue goes back
to the pool. A paused worker stays paused while disconnected and when it
comes back.

Cost. The shared queue is two heaps and a deque, with cancelled entries
skipped lazily, so submit, pop and cancel cost O(log n) whatever the queue
length; a job moves into a worker's queue at most once per placement.
"""

from __future__ import annotations

import heapq
import itertools
from collections import OrderedDict, deque
from collections.abc import Callable, Hashable, Iterator
from dataclasses import dataclass, field
from typing import Any

from build_scheduler.costs import CostModel

DEFAULT_RATE = 1.0
MIN_RATE = 0.001
MAX_RATE = 1000.0
DEFAULT_HINT_TTL_SECONDS = 3600.0
DEFAULT_MAX_AFFINITY_WAIT_SECONDS = 60.0
# Cancelled entries the queues may hold beyond their live jobs before they
# are rebuilt without them.
CANCELLED_ENTRIES_KEPT = 64


@dataclass(eq=False, slots=True)
class QueuedJob:
    id: str
    client: str
    urgent: bool
    submitted_at: float
    payload: Any = None
    cache_hint: str = ""
    estimate: float = 0.0  # the client's estimate in seconds; 0: none
    cancelled: bool = False
    # Set by the pool.
    cost: float = 0.0  # the seconds its client's share was charged
    rate: float = DEFAULT_RATE  # its client's rate when it was charged
    used: float = 0.0  # seconds its abandoned attempts ran
    tag: float = 0.0  # when the client's share lets it start
    order: int = 0  # breaks ties between equal tags: first come first
    reserved_for: str = ""  # the worker whose queue holds it
    reserved_at: float = 0.0
    waited_for_cache: bool = False  # it waited once for a busy worker


@dataclass(frozen=True)
class Assignment:
    """A job given to a worker's slot."""

    job: QueuedJob
    worker: str
    slot: Hashable


@dataclass
class RunningJob:
    job: QueuedJob
    started_at: float
    expected: float
    cached: bool


@dataclass
class WorkerState:
    name: str
    capacity: int
    active: bool = True  # neither paused by an operator nor by itself
    resting: bool = False  # paused by itself, for this session only
    running: dict[str, RunningJob] = field(default_factory=dict)
    waiting: OrderedDict[Hashable, None] = field(default_factory=OrderedDict)
    reserved: deque[QueuedJob] = field(default_factory=deque)
    hints: dict[str, float] = field(default_factory=dict)  # hint -> last used

    def load(self) -> float:
        queued = sum(1 for job in self.reserved if not job.cancelled)
        return (len(self.running) + queued) / self.capacity


@dataclass
class ClientShare:
    rate: float = DEFAULT_RATE
    next_tag: float = float("-inf")
    queued: int = 0
    running: int = 0


class Pool:
    def __init__(
        self,
        name: str,
        clock: Callable[[], float],
        *,
        hint_ttl: float = DEFAULT_HINT_TTL_SECONDS,
        max_affinity_wait: float = DEFAULT_MAX_AFFINITY_WAIT_SECONDS,
    ) -> None:
        self.name = name
        self._clock = clock
        self._hint_ttl = hint_ttl
        self._max_affinity_wait = max_affinity_wait
        self.costs = CostModel()
        self._front: deque[QueuedJob] = deque()  # jobs given back: first
        self._urgent: list[tuple[float, int, QueuedJob]] = []
        self._normal: list[tuple[float, int, QueuedJob]] = []
        self._sequence = itertools.count()
        self._queued: dict[str, QueuedJob] = {}
        self._urgent_waiting = 0
        self._workers: dict[str, WorkerState] = {}
        self._paused: set[str] = set()  # by name, connected or not
        # worker -> hint -> when it last built the hint, connected or not
        self._hints: dict[str, dict[str, float]] = {}
        self._reservations = 0  # entries in the workers' queues
        self._running_total = 0  # jobs running on the connected workers
        # The fair-share clock: the tag of the latest job started.
        self._virtual = 0.0
        self._clients: dict[str, ClientShare] = {}
        # slot -> worker name, in the order the slots started waiting
        self._waiting: OrderedDict[Hashable, str] = OrderedDict()

    # Workers

    def add_worker(self, name: str, capacity: int) -> None:
        """Register a worker, replacing any earlier registration of that name.

        What the pool knew of the name's cache stays: the worker that comes
        back under it is most likely the same machine.
        """
        self.remove_worker(name)
        state = WorkerState(name, capacity, active=name not in self._paused)
        state.hints = self._hints.setdefault(name, {})
        self._workers[name] = state

    def remove_worker(self, name: str) -> list[str]:
        """A worker left: returns the ids of the jobs it was running.

        Its own queue goes back to the pool. The caller deals with the
        running jobs (requeues them or ends them), must not report them
        finished, and then calls :meth:`dispatch`, which hands out what the
        worker leaves.
        """
        state = self._workers.pop(name, None)
        if state is None:
            return []
        for slot in state.waiting:
            del self._waiting[slot]
        self._unreserve_all(state)
        now = self._clock()
        self._running_total -= len(state.running)
        for running in state.running.values():
            self._share(running.job.client).running -= 1
            running.job.used += max(0.0, now - running.started_at)
        return sorted(state.running)

    def set_active(self, name: str, active: bool) -> list[Assignment]:
        """Pause or resume a worker, connected or not.

        Pausing gives its queue back to the pool; resuming may hand its
        waiting slots work at once.
        """
        if active:
            self._paused.discard(name)
        else:
            self._paused.add(name)
        return self._update_active(name)

    def set_resting(self, name: str, resting: bool) -> list[Assignment]:
        """A connected worker pauses or resumes itself.

        This lasts only as long as its session, and never lifts an
        operator's pause.
        """
        state = self._workers.get(name)
        if state is None:
            return []
        state.resting = resting
        return self._update_active(name)

    def _update_active(self, name: str) -> list[Assignment]:
        state = self._workers.get(name)
        if state is None:
            return []
        state.active = name not in self._paused and not state.resting
        if not state.active:
            self._unreserve_all(state)
        return self.dispatch()

    def is_paused(self, name: str) -> bool:
        return name in self._paused

    def has_hints(self, name: str) -> bool:
        return bool(self._hints.get(name))

    def forget(self, name: str) -> None:
        """Drop what is remembered of a worker that is not connected."""
        if name in self._workers:
            raise ValueError(f"worker {name!r} is connected")
        self._paused.discard(name)
        self._hints.pop(name, None)

    def slot_ready(self, worker: str, slot: Hashable) -> list[Assignment]:
        """A free slot of ``worker`` asks for work.

        Returns what can start now, for this slot or (rarely) others; a slot
        given nothing waits until a later call hands it a job.
        """
        state = self._workers[worker]
        self._waiting[slot] = worker
        state.waiting[slot] = None
        if state.active:
            job = self._pop_reserved(state)
            if job is not None:
                return [self._assign(job, state, slot)]
        return self.dispatch()

    def slot_gone(self, slot: Hashable) -> None:
        """A waiting slot stopped waiting (its worker went away)."""
        worker = self._waiting.pop(slot, None)
        if worker is not None and worker in self._workers:
            self._workers[worker].waiting.pop(slot, None)

    def job_finished(
        self, worker: str, job_id: str, *, succeeded: bool, final: bool = True
    ) -> None:
        """An attempt at a job ended on ``worker``; ``final`` if the job did.

        A succeeded build teaches its cost. At the job's end its client is
        charged what all its attempts took instead of what was expected.
        """
        state = self._workers.get(worker)
        running = state.running.pop(job_id, None) if state else None
        if running is None:
            return
        self._running_total -= 1
        job = running.job
        duration = max(0.0, self._clock() - running.started_at)
        share = self._share(job.client)
        share.running -= 1
        job.used += duration
        if final:
            share.next_tag += (job.used - job.cost) / job.rate
        if succeeded:
            self.costs.measured(job.cache_hint, cached=running.cached, seconds=duration)

    def job_abandoned(self, job: QueuedJob) -> None:
        """A job ended while no worker ran it: charge its client for it."""
        share = self._share(job.client)
        share.next_tag += (job.used - job.cost) / job.rate

    def cache_pruned(self, worker: str) -> None:
        """The worker dropped its build cache: it holds no hint any more."""
        state = self._workers.get(worker)
        if state is not None:
            state.hints.clear()

    # What outlives a restart

    def cache_records(self) -> list[tuple[str, str, float]]:
        """(worker, hint, seconds since last used) of every live hint."""
        now = self._clock()
        return [
            (worker, hint, now - used)
            for worker, hints in sorted(self._hints.items())
            for hint, used in sorted(hints.items())
            if now - used <= self._hint_ttl
        ]

    def restore_hint(self, worker: str, hint: str, age: float) -> None:
        self._hints.setdefault(worker, {})[hint] = self._clock() - age

    # Clients

    def set_rate(self, client: str, rate: float) -> None:
        if not MIN_RATE <= rate <= MAX_RATE:
            raise ValueError(f"a rate must be from {MIN_RATE:g} to {MAX_RATE:g}")
        self._share(client).rate = rate

    def forget_client(self, client: str) -> None:
        """Drop a client's rate; what it has queued or running stays counted."""
        share = self._clients.get(client)
        if share is not None:
            share.rate = DEFAULT_RATE

    def _share(self, client: str) -> ClientShare:
        share = self._clients.get(client)
        if share is None:
            share = self._clients[client] = ClientShare()
        return share

    # Jobs

    def submit(self, job: QueuedJob) -> list[Assignment]:
        """Queue ``job``; returns what can start now (the job, if anything)."""
        share = self._share(job.client)
        job.cost = self.costs.charged(
            job.cache_hint, cached=bool(self._holders(job.cache_hint)),
            estimate=job.estimate,
        )  # fmt: skip
        if not self._queued and not self._running_total:
            # Idle: nobody is owed anything for the past.
            self._virtual = max([self._virtual, *self._next_tags()])
        job.tag = max(self._virtual, share.next_tag)
        job.rate = share.rate
        share.next_tag = job.tag + job.cost / job.rate
        self._enqueue(job)
        return self.dispatch()

    def _next_tags(self) -> list[float]:
        return [s.next_tag for s in self._clients.values() if s.next_tag > -1e300]

    def requeue(self, job: QueuedJob) -> list[Assignment]:
        """Put a job that was taken back ahead of every other waiting job."""
        job.cancelled = False
        job.reserved_for = ""
        self._front.append(job)
        self._mark_queued(job)
        return self.dispatch()

    def cancel(self, job_id: str) -> bool:
        """Take a queued job out of the queue; False if it was not queued.

        Its client gets back the share the job was charged, less what its
        abandoned attempts took.
        """
        job = self._queued.pop(job_id, None)
        if job is None:
            return False
        job.cancelled = True
        self._urgent_waiting -= job.urgent
        share = self._share(job.client)
        share.queued -= 1
        share.next_tag += (job.used - job.cost) / job.rate
        self._drop_cancelled_if_many()
        return True

    def _drop_cancelled_if_many(self) -> None:
        """Rebuild the queues without their cancelled entries, once these
        are most of them.

        A cancel only marks the entry, which goes when it reaches the head;
        behind a long-running head that could be never.
        """
        entries = len(self._urgent) + len(self._normal) + len(self._front)
        if entries <= 2 * len(self._queued) + CANCELLED_ENTRIES_KEPT:
            return
        for heap in (self._urgent, self._normal):
            heap[:] = [entry for entry in heap if not entry[2].cancelled]
            heapq.heapify(heap)
        self._front = deque(job for job in self._front if not job.cancelled)

    def tick(self) -> list[Assignment]:
        """Give back the jobs that waited too long for a busy worker."""
        now = self._clock()
        expired = False
        for state in self._workers.values():
            while state.reserved and (
                state.reserved[0].cancelled
                or now - state.reserved[0].reserved_at >= self._max_affinity_wait
            ):
                job = self._take_reserved(state)
                if not job.cancelled:
                    job.reserved_for = ""
                    job.waited_for_cache = True
                    self._push_shared(job)
                    expired = True
        return self.dispatch() if expired else []

    def next_tick(self) -> float | None:
        """When :meth:`tick` may next have something to do, if ever."""
        if not self._reservations:
            return None
        times = [
            state.reserved[0].reserved_at + self._max_affinity_wait
            for state in self._workers.values()
            if state.reserved
        ]
        return min(times, default=None)

    def queue_position(self, job_id: str) -> int | None:
        """How many waiting jobs leave before this one (O(n): for status only).

        For a job in a worker's queue, the jobs ahead of it in that queue.
        """
        job = self._queued.get(job_id)
        if job is None:
            return None
        if job.reserved_for:
            queue = self._workers[job.reserved_for].reserved
            return [j for j in queue if not j.cancelled].index(job)
        front = [j for j in self._front if not j.cancelled]
        if job in front:
            return front.index(job)
        key = (job.tag, job.order)

        def ahead(heap: list[tuple[float, int, QueuedJob]], everyone: bool) -> int:
            return sum(
                1 for t, o, j in heap if not j.cancelled and (everyone or (t, o) < key)
            )

        if job.urgent:
            return len(front) + ahead(self._urgent, everyone=False)
        return (
            len(front)
            + ahead(self._urgent, everyone=True)
            + ahead(self._normal, everyone=False)
        )

    def queued_jobs(self) -> Iterator[QueuedJob]:
        """Waiting jobs: each worker's queue, then the pool's, in order."""
        for state in self.workers:
            yield from (job for job in state.reserved if not job.cancelled)
        yield from (job for job in self._front if not job.cancelled)
        for heap in (self._urgent, self._normal):
            yield from (job for _, _, job in sorted(heap) if not job.cancelled)

    def __len__(self) -> int:
        return len(self._queued)

    def queue_lengths(self) -> tuple[int, int]:
        """How many urgent and how many normal jobs wait."""
        return self._urgent_waiting, len(self._queued) - self._urgent_waiting

    @property
    def workers(self) -> list[WorkerState]:
        return sorted(self._workers.values(), key=lambda w: w.name)

    @property
    def paused(self) -> set[str]:
        return set(self._paused)

    def counts(self, client: str) -> tuple[int, int]:
        """How many jobs of the client wait, and how many run."""
        share = self._clients.get(client)
        return (share.queued, share.running) if share else (0, 0)

    def jobs_of(self, client: str) -> list[str]:
        """The ids of the client's waiting jobs."""
        return [job.id for job in self._queued.values() if job.client == client]

    # Queueing

    def _enqueue(self, job: QueuedJob) -> None:
        self._push_shared(job)
        self._mark_queued(job)

    def _mark_queued(self, job: QueuedJob) -> None:
        self._queued[job.id] = job
        self._urgent_waiting += job.urgent
        self._share(job.client).queued += 1

    def _push_shared(self, job: QueuedJob) -> None:
        heap = self._urgent if job.urgent else self._normal
        job.order = next(self._sequence)
        heapq.heappush(heap, (job.tag, job.order, job))

    def _peek_shared(self) -> QueuedJob | None:
        while self._front and self._front[0].cancelled:
            self._front.popleft()
        if self._front:
            return self._front[0]
        for heap in (self._urgent, self._normal):
            while heap and heap[0][2].cancelled:
                heapq.heappop(heap)
            if heap:
                return heap[0][2]
        return None

    def _pop_shared(self, job: QueuedJob) -> None:
        if self._front and self._front[0] is job:
            self._front.popleft()
        else:
            heapq.heappop(self._urgent if job.urgent else self._normal)

    def _pop_reserved(self, state: WorkerState) -> QueuedJob | None:
        while state.reserved:
            job = self._take_reserved(state)
            if not job.cancelled:
                return job
        return None

    def _take_reserved(self, state: WorkerState) -> QueuedJob:
        self._reservations -= 1
        return state.reserved.popleft()

    def _unreserve_all(self, state: WorkerState) -> None:
        while state.reserved:
            job = self._take_reserved(state)
            if not job.cancelled:
                job.reserved_for = ""
                self._push_shared(job)

    # Choosing

    def dispatch(self) -> list[Assignment]:
        """Hand waiting jobs to free slots; returns what can start now."""
        assignments = []
        while (job := self._peek_shared()) is not None:
            free = self._first_free_slot()
            if free is None:
                break
            self._pop_shared(job)
            worker, reserve = self._place(job, free)
            if reserve:
                job.reserved_for = worker.name
                job.reserved_at = self._clock()
                worker.reserved.append(job)
                self._reservations += 1
            else:
                slot = next(iter(worker.waiting))
                assignments.append(self._assign(job, worker, slot))
        return assignments

    def _place(self, job: QueuedJob, free: WorkerState) -> tuple[WorkerState, bool]:
        """Where ``job`` goes, and whether it waits in that worker's queue."""
        if not job.cache_hint:
            return free, False
        holders = self._holders(job.cache_hint)
        for holder in holders:
            if holder.waiting:
                return holder, False
        if holders and not job.waited_for_cache:
            bound = min(
                self._max_affinity_wait,
                self.costs.saving(job.cache_hint, estimate=job.estimate),
            )
            wait, holder = min((self._expected_wait(h), h.name, h) for h in holders)[
                0::2
            ]
            if wait < bound:
                return holder, True
        rank: dict[str, int] = {}
        for worker in self._waiting.values():
            rank.setdefault(worker, len(rank))
        idle = [w for w in self._workers.values() if w.active and w.waiting]
        return min(idle, key=lambda w: (w.load(), rank[w.name])), False

    def _holders(self, hint: str) -> list[WorkerState]:
        """Active workers that hold ``hint``, by name."""
        if not hint:
            return []
        now = self._clock()
        holders = []
        for state in self.workers:
            used = state.hints.get(hint)
            if used is None:
                continue
            if now - used > self._hint_ttl:
                del state.hints[hint]
            elif state.active:
                holders.append(state)
        return holders

    def _expected_wait(self, state: WorkerState) -> float:
        """How long a job added to the worker's queue is expected to wait."""
        now = self._clock()
        work = sum(
            max(0.0, r.expected - (now - r.started_at)) for r in state.running.values()
        )
        work += sum(job.cost for job in state.reserved if not job.cancelled)
        return work / state.capacity

    def _first_free_slot(self) -> WorkerState | None:
        for worker in self._waiting.values():
            state = self._workers[worker]
            if state.active:
                return state
        return None

    def _assign(self, job: QueuedJob, state: WorkerState, slot: Hashable) -> Assignment:
        now = self._clock()
        del self._waiting[slot]
        del state.waiting[slot]
        del self._queued[job.id]
        self._urgent_waiting -= job.urgent
        share = self._share(job.client)
        share.queued -= 1
        share.running += 1
        self._virtual = max(self._virtual, job.tag)
        job.reserved_for = ""
        cached = False
        if job.cache_hint:
            cached = job.cache_hint in state.hints
            state.hints[job.cache_hint] = now
        expected = self.costs.expected(
            job.cache_hint, cached=cached, estimate=job.estimate
        )
        state.running[job.id] = RunningJob(job, now, expected, cached)
        self._running_total += 1
        return Assignment(job, state.name, slot)

    # Showing

    def show(self) -> str:
        """A readable snapshot of the pool, used by ``show`` and by tests."""
        now = self._clock()
        lines = [f"pool {self.name}: {len(self)} queued"]
        for w in self.workers:
            flags = "" if w.active else " (paused)"
            running = ", ".join(sorted(w.running))
            queue = [job.id for job in w.reserved if not job.cancelled]
            line = (
                f"  worker {w.name}{flags}: capacity {w.capacity},"
                f" running {len(w.running)}"
                + (f" ({running})" if running else "")
                + f", idle slots {len(w.waiting)}"
            )
            if queue:
                line += f", queue {len(queue)} ({', '.join(queue)})"
            if w.hints:
                line += f", hints {', '.join(sorted(w.hints))}"
            lines.append(line)
        for name in sorted(self._paused - self._workers.keys()):
            lines.append(f"  worker {name} (paused): not connected")
        active = {c: s for c, s in self._clients.items() if s.queued or s.running}
        total_rate = sum(s.rate for s in active.values())
        for client, share in sorted(self._clients.items()):
            if client in active:
                part = f"share {100 * share.rate / total_rate:.0f}%"
            elif share.rate != DEFAULT_RATE:
                part = "no work"
            else:
                continue
            lines.append(
                f"  client {client}: rate {share.rate:g}, {part},"
                f" running {share.running}, queued {share.queued}"
            )
        for job in self.queued_jobs():
            mark = "urgent " if job.urgent else ""
            where = f" for {job.reserved_for}" if job.reserved_for else ""
            waited = now - job.submitted_at
            lines.append(
                f"  queued {mark}{job.id} from {job.client}{where},"
                f" waiting {waited:.0f}s"
            )
        return "\n".join(lines)
