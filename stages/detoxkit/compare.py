"""Every method against the start, on the same prompts: paired differences with bootstrap intervals for every
metric and judge, the guards, the reward-hacking signature (judge_disagrees), the cost, and which method is the
answer. One schema for every method (method_entry): metrics/compare/<method>.json. The report stage renders these
files; publish reads them."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Optional

from .config import PipelineError
from .evaluation import JUDGE, judge_names, per_prompt, summarize
from .render import HEADLINE
from .stats import NA, crossed_guards, guards, paired_bootstrap

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


# The methods, in the order the report shows them; best-of-N is a sampling procedure (no weights to publish).
LABELS = {"ppo": "PPO", "dpo": "DPO", "grpo": "GRPO", "best_of_n": "best-of-N"}
TRAINED = ("ppo", "dpo", "grpo")
SHARED = ("setup", "num_samples", "num_prompts", "samples_per_prompt", "confidence", "toxic_threshold", "references",
          "before")  # the same in every method's file: the run and the start


def setup(params, m_before: dict) -> dict:
    """What ran and on what, shared by every comparison file (the model card's source)."""
    p, rp = params, params.report
    return {"setup": {"policy": p.policy.model, "adapter": p.policy.adapter, "reward": p.reward.model,
                      "not_hate_label": p.reward.not_hate_label, "reward_definition": p.reward.describe(),
                      "judges": [j.model for j in p.evaluation.judges], "data_source": p.data.source,
                      "prompt_template": p.prompt.template, "chat_template": p.prompt.chat_template,
                      "reward_include_prompt": p.reward.include_prompt},
            "num_samples": m_before["num_samples"], "num_prompts": m_before["num_prompts"],
            "samples_per_prompt": m_before["samples_per_prompt"], "confidence": rp.confidence,  # of every CI
            "toxic_threshold": p.evaluation.toxic_threshold, "references": m_before["references"], "before": m_before}


def method_entry(method: str, before: list[dict], rows: list[dict], params, training: Optional[dict] = None,
                 timing: Optional[dict] = None) -> dict:
    """`method`'s comparison file: the shared setup, its metrics against the start (each with a paired CI), the
    judges, the guards, its KL and its cost. `rows` empty (its stages off) gives {"method", "enabled": false}."""
    if not rows:
        return {"method": method, "enabled": False}
    threshold = params.evaluation.toxic_threshold
    check_paired(before, rows, LABELS[method])
    m_before = summarize(before, threshold)
    entry = versus_start(before, rows, m_before, threshold, params)
    training, timing = training or {}, timing or {}
    n = params.best_of_n.n if method == "best_of_n" else 1
    out = {"method": method, "enabled": True, **setup(params, m_before), "after": entry.pop("metrics"),
           **{key: None for key in METRICS}, **entry}  # None: a metric this run has not (ROUGE, best-of-N's KL)
    out["kl_mean"] = out["after"].get("kl_mean")  # nats per token; best-of-N has no single policy's KL
    out["kl_bound"] = math.log(n) - (n - 1) / n if method == "best_of_n" else None  # nats per response
    out["cost"] = {"evaluation_generation": n,  # x one sample a response (best-of-N samples n)
                   "training_responses": training.get("rollouts", 0 if method == "best_of_n" else None),
                   "optimizer_steps": training.get("optimizer_steps", 0 if method == "best_of_n" else None),
                   "wall_s": timing.get("wall_s", 0.0 if method == "best_of_n" else None),
                   "peak_memory_mb": timing.get("peak_memory_mb")}
    out["training"] = {k: training[k] for k in ("steps_done", "early_stopped", "early_stop_step", "pairs", "prompts",
                                                "settings", "processes") if k in training}
    return out


def read_method(name: str, samples: str, live: Optional[str]) -> tuple[list[dict], dict, dict]:
    """(sample rows, train.json, timing.json) of one method; the JSON files empty where a method has none."""
    from .io import read_csv, read_json

    live_dir = Path(live) if live else None
    train = read_json(live_dir / "train.json") if live_dir and (live_dir / "train.json").is_file() else {}
    timing = read_json(live_dir / "timing.json") if live_dir and (live_dir / "timing.json").is_file() else {}
    rows = read_csv(samples)
    return (rows if train.get("enabled", True) else []), train, timing


def qualifies(entry: dict) -> bool:
    """A method the report may name: toxicity fell (the whole interval below 0) and no guard was crossed."""
    return entry.get("enabled", False) and entry["toxicity"]["diff_ci_high"] < 0 and not crossed_guards(entry["guards"])


def best_method(entries: dict[str, dict], trained_only: bool = False) -> Optional[str]:
    """The report's answer: the lowest toxicity among the methods that qualify; None if none does."""
    ok = [m for m, e in entries.items() if qualifies(e) and (m in TRAINED or not trained_only)]
    return min(ok, key=lambda m: (entries[m]["toxicity"]["after"], list(LABELS).index(m))) if ok else None


def choose_published(entries: dict[str, dict], wanted: str) -> tuple[str, str]:
    """(method, why) for publish.method `wanted`: a method by name, or for `best` the report's answer; when
    best-of-N wins (no weights) or nothing qualifies, the trained method with the lowest toxicity, with a note."""
    if wanted != "best":
        if not entries.get(wanted, {}).get("enabled"):
            raise PipelineError(f"publish.method is {wanted}, but its comparison file says it did not run; set "
                                f"{wanted}.enabled: true or choose another publish.method")
        return wanted, f"publish.method is {wanted}"
    best = best_method(entries)
    if best in TRAINED:
        return best, f"the report's answer: {LABELS[best]} lowered toxicity most with no guard crossed"
    trained = best_method(entries, trained_only=True)
    if best == "best_of_n" and trained:
        return trained, (f"best-of-N lowered toxicity most, but it is a sampling procedure with no weights; "
                         f"{LABELS[trained]} is the best trained method")
    if best == "best_of_n":
        why = "best-of-N lowered toxicity most, but it is a sampling procedure, and no trained method qualified"
    else:
        why = "no method lowered toxicity (its interval below 0) without crossing a guard"
    ran = [m for m in TRAINED if entries.get(m, {}).get("enabled")]
    if not ran:
        raise PipelineError("no trained method ran (ppo always runs: is metrics/compare complete?); rerun `dvc repro`")
    lowest = min(ran, key=lambda m: entries[m]["toxicity"]["after"])
    return lowest, f"{why}; published: the trained method with the lowest toxicity, {LABELS[lowest]} (not a recommendation)"
