"""Timing helpers for the benchmarks: rates measured side by side, so that ratios survive a shared, noisy machine."""

from __future__ import annotations

import statistics
import time
from typing import NamedTuple


class Rate(NamedTuple):
    wall: float  # items per second of wall time
    cpu: float  # items per CPU-second of this process (all its threads): the rate per core


def interleaved_rates(cases: dict, n_items: int, rounds: int = 5, min_seconds: float = 0.3) -> dict[str, Rate]:
    """Items per second of each case: medians over ``rounds``, the cases run in turn within each round.

    Within a round a case runs until ``min_seconds`` have passed, so that a short case and a long one both span
    many scheduler time slices: on a loaded machine a best-of-N timing favours the case short enough to fit in an
    undisturbed slice.
    """
    wall: dict[str, list[float]] = {name: [] for name in cases}
    cpu: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(rounds):
        for name, fn in cases.items():
            calls, t0, c0 = 0, time.perf_counter(), time.process_time()
            while (elapsed := time.perf_counter() - t0) < min_seconds or not calls:
                fn()
                calls += 1
            wall[name].append(n_items * calls / elapsed)
            cpu[name].append(n_items * calls / max(time.process_time() - c0, 1e-9))
    return {name: Rate(statistics.median(wall[name]), statistics.median(cpu[name])) for name in cases}


def print_table(title: str, rates: dict[str, Rate], baseline: str, unit: str = "records/s") -> None:
    """A comparison table: each case's rate per second and per CPU-second, and their ratios to ``baseline``."""
    width = max(map(len, rates))
    base = rates[baseline]
    print(f"\n{title}\n{'case':<{width}}  {unit:>12}  {'ratio':>6}  {unit[:-2] + '/CPU-s':>16}  {'ratio':>6}")
    for name, r in rates.items():
        print(f"{name:<{width}}  {r.wall:>12,.0f}  {r.wall / base.wall:>5.2f}x  {r.cpu:>16,.0f}  {r.cpu / base.cpu:>5.2f}x")
