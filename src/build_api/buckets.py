"""Histogram buckets that the scheduler's and the workers' metrics share,
so that their build durations can be compared bucket for bucket."""

from __future__ import annotations

# Builds take seconds to hours.
BUILD_DURATION_BUCKETS = (
    1, 5, 15, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200, float("inf"),
)  # fmt: skip
