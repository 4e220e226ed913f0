"""Every method against the start, on the same prompts: paired differences with bootstrap intervals for every
metric and judge, the guards, and the reward-hacking signature (judge_disagrees). The report stage renders what
these functions compute."""
from __future__ import annotations

from .config import PipelineError
from .evaluation import JUDGE, judge_names, per_prompt, summarize
from .render import HEADLINE
from .stats import NA, guards, paired_bootstrap

# summary key -> per-prompt series (evaluation.per_prompt): each compared with the start with a paired CI
METRICS = {"toxicity": "toxicity", "expected_max_toxicity": "max_toxicity", "toxicity_probability": "toxic_any",
           "reward": "reward", "rouge1": "rouge1", "rouge2": "rouge2", "rougeL": "rougeL", "length": "length",
           "perplexity": "perplexity", "kl": "kl", **{f"distinct_{n}_per_prompt": f"distinct_{n}_per_prompt"
                                                      for n in (1, 2, 3)}}
JUDGE_METRICS = {"toxicity": "", "expected_max_toxicity": "_max", "toxicity_probability": "_any"}
BETTER = {key: better for key, _, better in HEADLINE}


def check_paired(before: list[dict], other: list[dict], what: str):
    key = [(r["index"], r["sample"], r["prompt"]) for r in before]
    if key != [(r["index"], r["sample"], r["prompt"]) for r in other]:
        raise PipelineError(f"baseline and {what} were evaluated on different prompts or numbers of samples; "
                            "rerun `dvc repro`")
    if not before:
        raise PipelineError("no evaluated samples to compare; raise evaluation.num_samples")


TOXICITY_METRICS = ("toxicity", "expected_max_toxicity", "toxicity_probability")  # those with improvement_pct


def paired_entry(key: str, before, after, rp) -> dict:
    """Mean start/other, the paired difference and its CI, direction-named: `better` says which way is good,
    `change_pct` is (other - start) / start x 100 (with its CI); toxicity metrics also keep the lab's
    `improvement_pct` (start - other) / start x 100."""
    s = paired_bootstrap(before, after, rp.bootstrap_resamples, rp.bootstrap_seed, rp.confidence)
    lo, hi = s["improvement_pct_ci"]
    entry = {"before": s["before"], "after": s["after"], "diff": s["diff"], "diff_ci_low": s["diff_ci"][0],
             "diff_ci_high": s["diff_ci"][1], "better": BETTER.get(key, "lower"),
             "change_pct": None if s["improvement_pct"] is None else -s["improvement_pct"],
             "change_pct_ci_low": None if hi is None else -hi, "change_pct_ci_high": None if lo is None else -lo}
    if key in TOXICITY_METRICS:  # the lab's formula, named as the lab names it
        entry.update(improvement_pct=s["improvement_pct"], improvement_pct_ci_low=lo, improvement_pct_ci_high=hi)
    return entry


def compare(before: list[dict], other: list[dict], threshold: float, rp) -> tuple[dict, dict]:
    """Every metric both sides have, per prompt, as a paired_entry; and {judge: {metric: paired_entry}}."""
    b, a = per_prompt(before, threshold), per_prompt(other, threshold)
    metrics = {key: paired_entry(key, b[col], a[col], rp) for key, col in METRICS.items() if col in b and col in a}
    judges = {name: {key: paired_entry(key, b[f"{JUDGE}{name}{suffix}"], a[f"{JUDGE}{name}{suffix}"], rp)
                     for key, suffix in JUDGE_METRICS.items()} for name in judge_names(before)}
    return metrics, judges


def versus_start(before: list[dict], other: list[dict], m_before: dict, threshold: float, params) -> dict:
    """Another method against the start, as PPO is in summary.json: its metrics, each paired entry with its CI,
    the judges, and its guards (a guard that needs what the method has not, such as KL for best-of-N, n/a)."""
    m_other = summarize(other, threshold)
    entries, judges = compare(before, other, threshold, params.report)
    entry = {"metrics": m_other, **entries, "judges": judges, "guards": guards(m_before, m_other, params.guard)}
    entry["guards"]["judge_disagrees"] = judge_disagrees(entry, params.guard.min_judge_agreement)
    return entry


def relative_fall(s: dict) -> float:
    return -s["diff"] / s["before"] if s["before"] > 0 else 0.0


def judge_disagrees(summary: dict, min_agreement: float):
    """The reward-hacking signature: the reward classifier's toxicity falls by more than its CI (the whole
    interval below 0), but some judge's toxicity does not fall (its interval reaches 0), rises, or falls by
    less than `min_agreement` of the reward's relative fall (a 90% fall the judge sees as 0.5% is no
    detoxification, however narrow the judge's interval). NA with no judges: nothing could disagree."""
    if not summary["judges"]:
        return NA
    reward = summary["toxicity"]
    if not reward["diff_ci_high"] < 0:
        return False
    return any(j["toxicity"]["diff_ci_high"] >= 0 or
               relative_fall(j["toxicity"]) < min_agreement * relative_fall(reward) for j in summary["judges"].values())
