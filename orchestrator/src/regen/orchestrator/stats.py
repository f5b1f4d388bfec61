"""The statistics of a run and of a comparison, all deterministic (seeded).

- `summarize`: n, mean, sample std and a percentile bootstrap interval of the mean
  (resampling the cases with replacement).
- `summarize_pooled`: the same over several run seeds of one generator: a two-stage
  bootstrap (resample the cases, then each chosen case's seeds), so the interval holds
  both the spread between cases and the spread between seeds of one case.
- `sign_flip_test`: a paired permutation test of "the mean difference is 0" (exact
  enumeration of the 2^n sign patterns up to `EXACT_MAX_PAIRS` pairs, else seeded
  random sign patterns), two-sided.
- `holm`: Holm's step-down adjustment of p-values for multiple comparisons.
"""

from __future__ import annotations

import itertools
import math
import statistics
from collections.abc import Sequence
from typing import Any

import numpy as np

_CHUNK = 1000
# Up to this many pairs the permutation test enumerates every sign pattern (2^16 = 65 536).
EXACT_MAX_PAIRS = 16
# Differences closer to the observed one than this count as "as extreme" (rounding).
_TIE_TOLERANCE = 1e-12


def _percentile_interval(means: np.ndarray, confidence: float) -> tuple[float, float]:
    tail = (1.0 - confidence) / 2.0
    low, high = np.quantile(means, [tail, 1.0 - tail])
    return float(low), float(high)


def bootstrap_ci(values: Sequence[float], *, resamples: int, confidence: float, seed: int) -> tuple[float, float]:
    """Percentile interval of the mean over `resamples` resamples with replacement."""
    data = np.asarray(values, dtype=np.float64)
    rng = np.random.default_rng(seed)
    means = np.empty(resamples, dtype=np.float64)
    for start in range(0, resamples, _CHUNK):
        stop = min(resamples, start + _CHUNK)
        means[start:stop] = data[rng.integers(0, len(data), size=(stop - start, len(data)))].mean(axis=1)
    return _percentile_interval(means, confidence)


def empty_summary() -> dict[str, Any]:
    return {"n": 0, "mean": None, "std": None, "ci_low": None, "ci_high": None}


def summarize(values: Sequence[float], *, resamples: int, confidence: float, seed: int) -> dict[str, Any]:
    n = len(values)
    if n == 0:
        return empty_summary()
    low, high = bootstrap_ci(values, resamples=resamples, confidence=confidence, seed=seed)
    return {
        "n": n,
        # fsum is exactly rounded, hence independent of summation order.
        "mean": math.fsum(values) / n,
        "std": statistics.stdev(values) if n > 1 else None,
        "ci_low": low,
        "ci_high": high,
    }


def summarize_pooled(
    groups: Sequence[Sequence[float]], *, resamples: int, confidence: float, seed: int
) -> dict[str, Any]:
    """Values grouped by case (one value per run seed that finished the case).

    The mean is the mean over cases of each case's mean over its seeds (every case
    weighs the same, however many seeds finished it). The interval is a two-stage
    percentile bootstrap: each resample draws the cases with replacement, then for each
    drawn case its seeds with replacement, and takes the same mean of means; so it
    widens with the seed-to-seed spread as well as the case-to-case spread. With one
    value per case this is `summarize` exactly.
    """
    groups = [list(g) for g in groups if len(g)]
    if all(len(g) == 1 for g in groups):
        return summarize([g[0] for g in groups], resamples=resamples, confidence=confidence, seed=seed)
    n = len(groups)
    case_means = [math.fsum(g) / len(g) for g in groups]
    counts = np.asarray([len(g) for g in groups])
    width = int(counts.max())
    padded = np.zeros((n, width), dtype=np.float64)
    for i, g in enumerate(groups):
        padded[i, : len(g)] = g
    rng = np.random.default_rng(seed)
    means = np.empty(resamples, dtype=np.float64)
    for start in range(0, resamples, _CHUNK):
        stop = min(resamples, start + _CHUNK)
        cases = rng.integers(0, n, size=(stop - start, n))
        chosen_counts = counts[cases][..., None]
        seeds = np.floor(rng.random((stop - start, n, width)) * chosen_counts).astype(np.int64)
        used = np.arange(width) < chosen_counts
        drawn = np.where(used, padded[cases[..., None], seeds], 0.0)
        means[start:stop] = (drawn.sum(axis=2) / counts[cases]).mean(axis=1)
    low, high = _percentile_interval(means, confidence)
    return {
        "n": n,
        "values": int(counts.sum()),
        "mean": math.fsum(case_means) / n,
        "std": statistics.stdev(case_means) if n > 1 else None,
        "ci_low": low,
        "ci_high": high,
    }


def sign_flip_test(differences: Sequence[float], *, resamples: int, seed: int) -> dict[str, Any]:
    """Two-sided paired permutation test of mean(differences) = 0.

    Under the null hypothesis each pair's difference is as likely to have either sign;
    the p-value is the share of sign patterns whose mean is at least as far from 0 as
    the observed one. Up to EXACT_MAX_PAIRS pairs every pattern is enumerated (exact);
    beyond, `resamples` seeded random patterns are drawn and p = (1 + hits) / (1 + resamples).
    """
    d = np.asarray(differences, dtype=np.float64)
    n = len(d)
    if n == 0:
        return {"n": 0, "p": None, "method": None}
    observed = abs(float(d.mean()))
    if n <= EXACT_MAX_PAIRS:
        signs = np.asarray(list(itertools.product((1.0, -1.0), repeat=n)))
        hits = int(np.sum(np.abs(signs @ d / n) >= observed - _TIE_TOLERANCE))
        return {"n": n, "p": hits / len(signs), "method": "exact"}
    rng = np.random.default_rng(seed)
    hits = 0
    for start in range(0, resamples, _CHUNK):
        stop = min(resamples, start + _CHUNK)
        signs = rng.choice((1.0, -1.0), size=(stop - start, n))
        hits += int(np.sum(np.abs(signs @ d / n) >= observed - _TIE_TOLERANCE))
    return {"n": n, "p": (1 + hits) / (1 + resamples), "method": f"random ({resamples} sign patterns)"}


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values (same order as given): the i-th smallest p is
    multiplied by (m - i), made non-decreasing, and capped at 1."""
    m = len(p_values)
    order = sorted(range(m), key=lambda i: p_values[i])
    adjusted = [0.0] * m
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p_values[i]))
        adjusted[i] = running
    return adjusted
