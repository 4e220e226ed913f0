"""Paired statistics for before/after evaluation and the reward-hacking guards; best-of-n's KL to its sampler; and the
variational best-of-N reward, the log of a reward's CDF among reference samples (a GRPO reward transform)."""
from __future__ import annotations

import math
from statistics import NormalDist

import numpy as np

from .errors import PipelineError
from .settings import GuardSettings

CHUNK = 1 << 22  # resampled indices held at once (32 MiB of int64)


def paired_bootstrap(before, after, resamples: int, seed: int, confidence: float) -> dict:
    """Mean before/after, mean paired difference (after - before) and percentile intervals.

    The same resampled indices are used for before and after, which keeps the pairing. The
    improvement percentage is the lab's (before - after) / before * 100 on the resampled means.
    """
    before, after = np.asarray(before, float), np.asarray(after, float)
    if before.shape != after.shape or before.size == 0:
        raise ValueError(f"paired samples must have the same non-zero length, got {before.size} and {after.size}")
    rng = np.random.default_rng(seed)
    # In chunks of at most CHUNK indices, so a million resamples of thousands of pairs fit in memory.
    rows = max(1, CHUNK // before.size)
    mb, ma = np.empty(resamples), np.empty(resamples)
    for start in range(0, resamples, rows):
        idx = rng.integers(0, before.size, size=(min(rows, resamples - start), before.size))
        mb[start:start + len(idx)], ma[start:start + len(idx)] = before[idx].mean(axis=1), after[idx].mean(axis=1)
    lo, hi = 100 * (1 - confidence) / 2, 100 * (1 + confidence) / 2
    diff = ma - mb
    with np.errstate(divide="ignore", invalid="ignore"):
        pct = np.where(mb != 0, (mb - ma) / mb * 100, np.nan)
    b_mean, a_mean = float(before.mean()), float(after.mean())
    return {
        "n": int(before.size),
        "degenerate": bool(np.ptp(diff) == 0),  # every resample gave the same difference
        "before": b_mean,
        "after": a_mean,
        "diff": a_mean - b_mean,
        "diff_ci": [float(np.percentile(diff, lo)), float(np.percentile(diff, hi))],
        "improvement_pct": improvement_pct(b_mean, a_mean),
        "improvement_pct_ci": [float(np.nanpercentile(pct, lo)), float(np.nanpercentile(pct, hi))]
        if np.isfinite(pct).any() else [None, None],
    }


def improvement_pct(before: float, after: float):
    """The lab's toxicity improvement: (before - after) / before * 100 (None when before is 0)."""
    return None if before == 0 else (before - after) / before * 100


# What an interval of a difference says: the one reading used by the verdicts, the answer, the colours and publish
TOO_FEW, NO_WIDTH, NO_CHANGE, DOWN, UP = "too few pairs", "no width", "no change", "down", "up"


def change(ci, n_pairs: int, min_pairs: int) -> str:
    """TOO_FEW below `min_pairs` pairs, NO_WIDTH for a degenerate (zero-width) interval: neither is a verdict (a
    percentile bootstrap of a few pairs is far too narrow, and of one pair it has no width at all); otherwise
    NO_CHANGE when the interval contains 0, DOWN when it lies below 0, UP when above."""
    lo, hi = ci
    if n_pairs < min_pairs:
        return TOO_FEW
    if not hi > lo:
        return NO_WIDTH
    return NO_CHANGE if lo <= 0 <= hi else DOWN if hi < 0 else UP


def interval_verdict(name: str, ci, lower_is_better: bool, n_pairs: int, min_pairs: int) -> str:
    """One sentence on whether the interval of the difference excludes zero, and in which direction (`change`)."""
    lo, hi = ci
    what = change(ci, n_pairs, min_pairs)
    if what == TOO_FEW:
        return (f"{name}: {n_pairs} paired prompts are too few to tell a real change from chance "
                f"(report.min_pairs is {min_pairs}); no verdict.")
    if what == NO_WIDTH:
        return (f"{name}: every resample of the {n_pairs} pairs gave the same difference ({lo:+.4f}), so the "
                "interval has no width and cannot tell a real change from chance; no verdict.")
    if what == NO_CHANGE:
        return (f"{name}: the interval [{lo:+.4f}, {hi:+.4f}] over {n_pairs} pairs contains 0, so the change "
                "could be chance.")
    better = (what == DOWN) == lower_is_better
    return (f"{name}: the interval [{lo:+.4f}, {hi:+.4f}] over {n_pairs} pairs excludes 0: a real "
            f"{'decrease' if what == DOWN else 'increase'} ({'better' if better else 'worse'}).")


def detectable_fall(start, confidence: float):
    """The smallest fall of a mean that a paired comparison over these prompts can tell from chance at `confidence`:
    z * sd / sqrt(n), sd of the per-prompt scores at the start (ddof 1). None below 2 prompts (no sd at all)."""
    start = np.asarray(start, float)
    if start.size < 2:
        return None
    return float(NormalDist().inv_cdf((1 + confidence) / 2) * start.std(ddof=1) / np.sqrt(start.size))


NA = "n/a"  # a guard that cannot fire here (no references, no judges): never reported as held


def crossed_guards(guards: dict) -> list[str]:
    """The guards that fired (True); not the ones that held (False) or cannot fire (n/a)."""
    return [name for name, crossed in guards.items() if crossed is True]


def guards(before: dict, after: dict, limits: GuardSettings) -> dict:
    """True means the limit was crossed (a warning sign of reward hacking or drift), False that it held, and
    NA ("n/a") that it cannot fire on this run (a prompt-only dataset has no references, so no ROUGE)."""
    return {
        "rougeL_drop_exceeded": (bool(before["rougeL"] - after["rougeL"] > limits.max_rougeL_drop)
                                 if "rougeL" in before else NA),
        "kl_exceeded": bool(after["kl_mean"] > limits.max_kl) if "kl_mean" in after else NA,  # best-of-N: no
                                                                                           # single policy's KL
        "length_below_min": bool(after["length_mean"] < limits.min_mean_length),
        "perplexity_rise_exceeded": bool(after["perplexity_mean"]
                                         > limits.max_perplexity_ratio * before["perplexity_mean"]),
        "distinct2_below_min": bool(after["distinct_2"] < limits.min_distinct2_ratio * before["distinct_2"]),
    }


NO_SPREAD = 1e-9  # reference rewards closer than this (relative to their size) are all one value


def vbon_reward(rewards, references) -> np.ndarray:
    """log F(r) for each reward r of one prompt's responses, F the smoothed empirical CDF of that prompt's reference
    rewards (the starting policy's own samples): F(r) = (#{ref < r} + #{ref = r} / 2 + 1/2) / (M + 1), in
    [1 / (2 (M + 1)), 1 - 1 / (2 (M + 1))], so the log is finite below and above every reference, and ties count half.
    It is the reward whose KL-regularised optimum with beta = 1 / (N - 1) is the best-of-N distribution (variational
    best-of-N, Amini et al. 2024). References with no spread rank nothing: every response gets log(1/2), the same value,
    so the prompt's group has no advantage (no signal, no NaN)."""
    refs = np.asarray(references, dtype=np.float64)
    r = np.asarray(rewards, dtype=np.float64)
    if refs.size == 0 or not np.all(np.isfinite(refs)):
        raise PipelineError(f"vbon_reward: the reference rewards must be finite and at least one (got {refs.tolist()})")
    if refs.max() - refs.min() <= NO_SPREAD * max(1.0, float(np.abs(refs).max())):
        return np.full(r.shape, math.log(0.5))
    below = (refs[None, :] < r[:, None]).sum(axis=1)
    equal = (refs[None, :] == r[:, None]).sum(axis=1)
    return np.log((below + 0.5 * equal + 0.5) / (refs.size + 1))


def bon_kl_bound(n: int) -> float:
    """KL(best-of-n || its sampler) in nats per response for a continuous reward, whatever its distribution: log n -
    (n - 1) / n (Beirami et al. 2024); ties in the reward only lower it."""
    return math.log(n) - (n - 1) / n


def bon_kl(rewards, n: int) -> float:
    """KL(best-of-n || P) in nats per response at one prompt, from samples of P's reward there (`rewards`, e.g. the
    prompt's candidates): bon_kl_bound(n) when no two tie (the exact value for a continuous reward); otherwise that of
    their empirical distribution, whose atoms best-of-n reweights from F - F_ to F^n - F_^n (F = P(R <= r),
    F_ = P(R < r)): sum over atoms of (F^n - F_^n) log((F^n - F_^n) / (F - F_)). One value for all: 0."""
    values, counts = np.unique(np.asarray(rewards, dtype=np.float64), return_counts=True)
    if counts.max() == 1:
        return bon_kl_bound(n)
    f = np.cumsum(counts) / counts.sum()
    f_below = f - counts / counts.sum()
    mass = f ** n - f_below ** n
    return float(np.sum(mass * np.log(mass / (f - f_below))))
