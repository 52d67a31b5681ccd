"""What a job is expected to cost, learned from what the pool measured.

A build's duration depends most on whether the worker already holds its
layers. So the model keeps two running means per cache hint, one for builds
on a worker that had the hint ("cached") and one for builds on a worker
that did not ("uncached"), and the same two for the whole pool. A job is
expected to cost, in order of preference: the mean measured for its hint
and flavour; the other flavour's mean for its hint, scaled by the pool's
cached-to-uncached ratio; the client's own estimate (taken as an uncached
build's); the pool's mean for the flavour; and, before anything has been
measured, a prior.

Means are exponentially weighted, so a hint whose builds got slower is
believed within a few builds. Only succeeded builds are measured: a build
that fails in its first step says nothing about what the next one costs.
"""

from __future__ import annotations

from dataclasses import dataclass

PRIOR_UNCACHED_SECONDS = 60.0
PRIOR_CACHED_RATIO = 0.25
MIN_CACHED_RATIO = 0.01  # a cached build that took no time says little
SMOOTHING = 0.3  # weight of the newest measurement


@dataclass
class RunningMean:
    mean: float = 0.0
    samples: int = 0

    def add(self, value: float) -> None:
        if self.samples == 0:
            self.mean = value
        else:
            self.mean += SMOOTHING * (value - self.mean)
        self.samples += 1


@dataclass
class HintCosts:
    cached: RunningMean
    uncached: RunningMean

    @classmethod
    def empty(cls) -> HintCosts:
        return cls(RunningMean(), RunningMean())

    def flavour(self, cached: bool) -> RunningMean:
        return self.cached if cached else self.uncached


class CostModel:
    def __init__(self) -> None:
        self.pool = HintCosts.empty()
        self.hints: dict[str, HintCosts] = {}

    def measured(self, hint: str, *, cached: bool, seconds: float) -> None:
        """Learn from one succeeded build."""
        self.pool.flavour(cached).add(seconds)
        if hint:
            self.hints.setdefault(hint, HintCosts.empty()).flavour(cached).add(seconds)

    def records(self) -> list[tuple[str, bool, RunningMean]]:
        """(hint, cached, mean) of every measured mean; hint '' is the pool's."""
        result = []
        for hint, costs in [("", self.pool), *sorted(self.hints.items())]:
            for cached in (True, False):
                mean = costs.flavour(cached)
                if mean.samples:
                    result.append((hint, cached, mean))
        return result

    def restore(self, hint: str, *, cached: bool, mean: float, samples: int) -> None:
        costs = self.hints.setdefault(hint, HintCosts.empty()) if hint else self.pool
        costs.flavour(cached).mean = mean
        costs.flavour(cached).samples = samples

    def cached_ratio(self) -> float:
        """How much of an uncached build's time a cached one takes."""
        cached, uncached = self.pool.cached, self.pool.uncached
        if cached.samples and uncached.samples and uncached.mean > 0:
            return min(1.0, max(MIN_CACHED_RATIO, cached.mean / uncached.mean))
        return PRIOR_CACHED_RATIO

    def expected(self, hint: str, *, cached: bool, estimate: float = 0.0) -> float:
        """The expected duration in seconds of a build of ``hint``."""
        ratio = self.cached_ratio()
        known = self.hints.get(hint) if hint else None
        if known is not None:
            same, other = known.flavour(cached), known.flavour(not cached)
            if same.samples:
                return same.mean
            if other.samples:
                return other.mean * ratio if cached else other.mean / ratio
        if estimate > 0:  # the client's guess of an uncached build
            return estimate * ratio if cached else estimate
        same, other = self.pool.flavour(cached), self.pool.flavour(not cached)
        if same.samples:
            return same.mean
        if other.samples:
            return other.mean * ratio if cached else other.mean / ratio
        return PRIOR_UNCACHED_SECONDS * (ratio if cached else 1.0)

    def charged(self, hint: str, *, cached: bool, estimate: float = 0.0) -> float:
        """What a job is charged against its client's share when queued.

        As expected, but never less than what the pool measured: a low
        estimate must not buy a client a larger share.
        """
        expected = self.expected(hint, cached=cached, estimate=estimate)
        if not self.pool.cached.samples and not self.pool.uncached.samples:
            return expected
        return max(expected, self.expected(hint, cached=cached))

    def saving(self, hint: str, *, estimate: float = 0.0) -> float:
        """How much sooner a build of ``hint`` is expected to end when cached."""
        uncached = self.expected(hint, cached=False, estimate=estimate)
        cached = self.expected(hint, cached=True, estimate=estimate)
        return max(0.0, uncached - cached)
