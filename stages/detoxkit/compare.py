"""Every method against the start, on the same prompts: paired differences with bootstrap intervals for every
metric and judge, the guards, the reward-hacking signature (judge_disagrees), the cost, and which method is the
answer. One schema for every method (method_entry): metrics/compare/<method>.json. The report stage renders these
files; publish reads them."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np

from .settings import PYTHON_SCORER, scorer_display_name
from .errors import PipelineError
from .summary import JUDGE, judge_names, per_prompt, present, summarize
from .methods import BEST_OF_N, Method
from .render import HEADLINE
from .stats import (DOWN, NA, NO_CHANGE, NO_WIDTH, TOO_FEW, UP, change, crossed_guards, detectable_fall, guards,
                    paired_bootstrap, bon_kl_bound)

# summary key -> per-prompt series (summary.per_prompt): each compared with the start with a paired CI
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


def compare(b: dict, a: dict, judges: list[str], rp) -> tuple[dict, dict]:
    """Every metric both sides have (summary.per_prompt series), as a paired_entry; and {judge: {metric:
    paired_entry}}."""
    metrics = {key: paired_entry(key, b[col], a[col], rp) for key, col in METRICS.items() if col in b and col in a}
    return metrics, {name: {key: paired_entry(key, b[f"{JUDGE}{name}{suffix}"], a[f"{JUDGE}{name}{suffix}"], rp)
                            for key, suffix in JUDGE_METRICS.items()} for name in judges}


def versus_start(before: list[dict], other: list[dict], m_before: dict, threshold: float, params) -> dict:
    """Another method against the start, as PPO is in summary.json: its metrics, each paired entry with its CI,
    the judges, their power (judge_power) and the guards (a guard that needs what the method has not, such as KL
    for best-of-N, or a judge too weak to see the fall, n/a)."""
    m_other = summarize(other, threshold)
    b, a = per_prompt(before, threshold), per_prompt(other, threshold)
    entries, judges = compare(b, a, judge_names(before), params.report)
    entry = {"metrics": m_other, **entries, "judges": judges, "guards": guards(m_before, m_other, params.guard)}
    detectable = {name: detectable_fall(b[f"{JUDGE}{name}"], params.report.confidence) for name in judges}
    entry["judge_power"] = judge_power(entry, params.guard.min_judge_agreement, detectable, len(b["toxicity"]))
    entry["guards"]["judge_disagrees"] = judge_disagrees(entry, params.guard.min_judge_agreement, detectable)
    return entry


def relative_fall(s: dict) -> float:
    return -s["diff"] / s["before"] if s["before"] > 0 else 0.0


def reward_fell(s: dict) -> bool:
    """The reward classifier's toxicity fell by more than its CI: the whole interval below 0, and of some width."""
    return s["diff_ci_low"] < s["diff_ci_high"] < 0


def judge_agrees(judge: dict, reward: dict, min_agreement: float) -> bool:
    """A judge's toxicity fell too (its interval below 0), by at least `min_agreement` of the reward's relative fall."""
    return judge["diff_ci_high"] < 0 and relative_fall(judge) >= min_agreement * relative_fall(reward)


def expected_fall(judge: dict, reward: dict, min_agreement: float) -> float:
    """What a judge's toxicity falls by if it agrees at exactly `min_agreement` of the reward's relative fall."""
    return judge["before"] * max(relative_fall(reward), 0.0) * min_agreement


def judge_blind(judge: dict, reward: dict, min_agreement: float, detectable) -> bool:
    """The reward fell, the judge did not confirm it, and it could not have: the fall it would show by agreeing is
    not above the smallest fall it can detect (stats.detectable_fall; None: no spread to judge by). A judge whose
    own interval shows a rise is never blind: it saw something, and that is disagreement."""
    return (reward_fell(reward) and not judge_agrees(judge, reward, min_agreement) and judge["diff_ci_low"] <= 0 and
            (detectable is None or expected_fall(judge, reward, min_agreement) <= detectable))


def judge_power(summary: dict, min_agreement: float, detectable: dict, n_pairs: int) -> dict:
    """Per judge: `detectable_fall` (the smallest fall of its toxicity these paired prompts can show), `expected_fall`
    (its fall if it agreed at `min_agreement` of the reward's relative fall) and `reason`, set when judge_blind: the
    guard cannot hear from it (n/a) and the report says the judge could not confirm the fall."""
    reward, out = summary["toxicity"], {}
    for name, j in summary["judges"].items():
        t, seen = j["toxicity"], detectable[name]
        expected = expected_fall(t, reward, min_agreement)
        reason = None
        if judge_blind(t, reward, min_agreement, seen):
            reason = (f"agreeing at guard.min_judge_agreement {min_agreement:g} of the reward's "
                      f"{relative_fall(reward):.1%} fall would lower it by only {expected:.4f} (from "
                      f"{t['before']:.4f}), " +
                      (f"and {n_pairs} paired prompt has no spread to tell any fall from chance" if seen is None else
                       f"while {n_pairs} paired prompts can only show a fall of {seen:.4f} or more"))
        out[name] = {"detectable_fall": seen, "expected_fall": expected, "reason": reason}
    return out


def judge_disagrees(summary: dict, min_agreement: float, detectable: dict):
    """The reward-hacking signature: the reward classifier's toxicity falls by more than its CI (reward_fell), but
    some judge's toxicity does not fall (its interval reaches 0), rises, or falls by less than `min_agreement` of
    the reward's relative fall (a 90% fall the judge sees as 0.5% is no detoxification, however narrow the judge's
    interval). Only a judge that could have seen the agreeing fall can disagree (judge_blind: `detectable`, per judge,
    from stats.detectable_fall): True if one such judge disagrees; False if the reward did not fall, or none
    disagrees and some judge agrees; NA if every judge was too weak to tell, or with no judges (nothing could
    disagree)."""
    if not summary["judges"]:
        return NA
    reward = summary["toxicity"]
    if not reward_fell(reward):
        return False
    said = [False if judge_agrees(j["toxicity"], reward, min_agreement) else
            NA if judge_blind(j["toxicity"], reward, min_agreement, detectable[name]) else True
            for name, j in summary["judges"].items()]
    return True if True in said else False if False in said else NA


TRAINING = ("steps_done", "early_stopped", "early_stop_step", "pairs", "prompts", "settings", "processes")  # of train.json
SHARED = ("setup", "num_samples", "num_prompts", "samples_per_prompt", "confidence", "min_pairs", "toxic_threshold",
          "references", "before")  # the same in every method's file: the run and the start


def score_labels(reward) -> dict:
    """What the reward scorer calls the report's toxicity and reward, in its own names: a classifier's labels
    (reward.hate_label, reward.not_hate_label), or a Python scorer's function (python:MODULE:FUNCTION)."""
    if reward.model.startswith(PYTHON_SCORER):
        name = scorer_display_name(reward.model)
        return {"scorer": "scorer", "toxicity_label": f"P(toxic) by {name}",
                "reward_label": f"log((1 - p) / p) of {name}"}
    return {"scorer": "classifier", "toxicity_label": f"P({reward.hate_label})",
            "reward_label": f"{reward.not_hate_label} logit"}


def setup(params, m_before: dict) -> dict:
    """What ran and on what, shared by every comparison file (the model card's source)."""
    p, rp = params, params.report
    return {"setup": {"policy": p.policy.model, "adapter": p.policy.adapter, "reward": p.reward.model,
                      "not_hate_label": p.reward.not_hate_label, "hate_label": p.reward.hate_label,
                      **score_labels(p.reward), "reward_definition": p.reward.describe(),
                      "judges": [j.model for j in p.evaluation.judges], "data_source": p.data.source,
                      "prompt_template": p.prompt.template, "chat_template": p.prompt.chat_template,
                      "reward_include_prompt": p.reward.include_prompt},
            "num_samples": m_before["num_samples"], "num_prompts": m_before["num_prompts"],
            "samples_per_prompt": m_before["samples_per_prompt"], "confidence": rp.confidence,  # of every CI
            "min_pairs": rp.min_pairs,  # fewer paired prompts give no verdict (outcome)
            "toxic_threshold": p.evaluation.toxic_threshold, "references": m_before["references"], "before": m_before}


def method_entry(method: Method, before: list[dict], rows: list[dict], params, training: Optional[dict] = None,
                 timing: Optional[dict] = None, best_of_n: Optional[list[dict]] = None,
                 base: Optional[dict] = None) -> dict:
    """`method`'s comparison file: who it is (name, label, algorithm, whether it trains weights), the shared setup,
    its metrics against the start (each with a paired CI), the judges and their power, the guards, its outcome, its KL
    and its cost, and (a trained method, with best-of-N's samples `best_of_n`) its paired difference to best-of-N.
    Best-of-N on a trained policy (NAME+bon) takes that policy's comparison file `base`: its KL guard is the trained
    policy's (its KL to the start, kl_to_start, adds best-of-N's over that policy to the kept responses' log-ratio).
    `rows` empty (its stages off) gives the first four keys and "enabled": false."""
    who = {"method": method.name, "label": method.label, "algorithm": method.algorithm.name,
           "trains_weights": method.trains_weights}
    if not rows:
        return {**who, "enabled": False}
    threshold = params.evaluation.toxic_threshold
    check_paired(before, rows, method.label)
    m_before = summarize(before, threshold)
    entry = versus_start(before, rows, m_before, threshold, params)
    training, timing = training or {}, timing or {}
    trains = method.trains_weights  # best-of-N samples n from the start instead, and costs no training
    n = 1 if trains else params.best_of_n.n
    out = {**who, "enabled": True, **setup(params, m_before), "after": entry.pop("metrics"),
           **{key: None for key in METRICS}, **entry}  # None: a metric this run has not (ROUGE, best-of-N's KL)
    out["kl_mean"] = out["after"].get("kl_mean")  # nats per token; best-of-N has no single policy's KL
    out["kl_bound"] = None if trains else bon_kl_bound(n)  # nats per response, beyond its policy's
    if base is not None and base.get("enabled"):  # best-of-N on a trained policy: that policy's KL to the start too
        out["kl_mean"], out["guards"]["kl_exceeded"] = base["kl_mean"], base["guards"]["kl_exceeded"]
    out["cost"] = {"evaluation_generation": n,  # x one sample a response (best-of-N samples n)
                   "training_responses": training.get("rollouts", None if trains else 0),
                   "optimizer_steps": training.get("optimizer_steps", None if trains else 0),
                   "wall_s": timing.get("wall_s", None if trains else 0.0),
                   "peak_memory_mb": timing.get("peak_memory_mb")}
    out["training"] = {k: training.get(k) for k in TRAINING}  # None: not this method's (best-of-N trains nothing)
    out["kl_to_start"] = kl_to_start(rows, None if trains else n)
    out["outcome"] = outcome(out)
    out["versus_best_of_n"] = versus_best_of_n(best_of_n, rows, params) if trains and best_of_n else None
    return out


def kl_to_start(rows: list[dict], n: Optional[int]) -> Optional[dict]:
    """KL from the starting policy, in nats per response, measured the same way for every method (the reward-KL
    frontier's x axis). A trained policy (`n` None): the mean over its evaluated samples of log p(y) / p_start(y)
    summed over the response's tokens (their `kl_response`). Best-of-n over a policy P (the start, or a trained one):
    KL(bon || start) = KL(bon || P) + E_bon[log P / p_start]: the mean over prompts of best-of-n's KL to P at the
    prompt (the samples' `kl_bon`: stats.bon_kl of the prompt's candidates, log n - (n - 1) / n for a continuous
    reward) plus the kept responses' mean log-ratio (0 for the start); `bound` adds the analytic bound instead. None
    when the samples carry no log-ratios (an older run)."""
    if not rows or not present(rows, "kl_response") or (n is not None and not present(rows, "kl_bon")):
        return None
    own = float(np.mean([float(r["kl_response"]) for r in rows]))
    if n is None:
        return {"nats": own, "bound": None, "how": "mean log-ratio to the start of the policy's own samples"}
    over = float(np.mean([float(r["kl_bon"]) for r in rows]))  # k samples a prompt: the mean over prompts
    return {"nats": over + own, "bound": bon_kl_bound(n) + own,
            "how": f"best-of-{n}: its KL to its sampling policy at each prompt (from the prompt's candidates), plus "
                   "the kept responses' log-ratio of that policy to the start"}


def versus_best_of_n(bon: list[dict], rows: list[dict], params) -> dict:
    """A trained method against best-of-N on the same prompts and samples: the paired difference (method - best-of-N)
    of toxicity and of each judge's toxicity, with its CI, and `change` (stats.change: no change means the two cannot
    be told apart on these prompts; down: the method is less toxic; up: best-of-N is)."""
    check_paired(bon, rows, "best-of-N")
    threshold, rp = params.evaluation.toxic_threshold, params.report
    b, a = per_prompt(bon, threshold), per_prompt(rows, threshold)
    tox = paired_entry("toxicity", b["toxicity"], a["toxicity"], rp)
    return {"toxicity": tox, "judges": {name: paired_entry("toxicity", b[f"{JUDGE}{name}"], a[f"{JUDGE}{name}"], rp)
                                         for name in judge_names(bon)},
            "change": change((tox["diff_ci_low"], tox["diff_ci_high"]), len(b["toxicity"]), rp.min_pairs)}


def matches_best_of_n(entry: dict) -> bool:
    """A trained method that lowered toxicity (qualifies) and that best-of-N (on the start) does not beat on these
    prompts: the paired interval of their toxicity difference contains 0 (or lies below it)."""
    vs = entry.get("versus_best_of_n")
    return qualifies(entry) and entry["trains_weights"] and vs is not None and vs["change"] in (NO_CHANGE, DOWN)


def why_answer(entries: dict[str, dict], answer: str) -> str:
    """Why `answer` (answer_method) is the answer, in one clause."""
    e, lowest = entries[answer], best_method(entries)
    if lowest == answer:
        return f"{e['label']} lowered toxicity most with no guard crossed"
    vs, n = e["versus_best_of_n"]["toxicity"], entries[lowest]["cost"]["evaluation_generation"]
    return (f"{e['label']} lowered toxicity with no guard crossed and cannot be told from {entries[lowest]['label']} "
            f"(toxicity {vs['diff']:+.4f} [{vs['diff_ci_low']:+.4f}, {vs['diff_ci_high']:+.4f}] against it), at one "
            f"sample a request instead of {n}")


def answer_method(entries: dict[str, dict]) -> Optional[str]:
    """The report's answer, inference cost weighed: the lowest toxicity that qualifies (best_method); but when that is
    best-of-N (N samples a request) and a trained method matches it (matches_best_of_n: one sample a request), the
    trained method, the least toxic of those that match. (Best-of-N on a trained policy, NAME+bon, is not what
    versus_best_of_n measures: when it is the lowest, it stays the answer.)"""
    best = best_method(entries)
    if best != BEST_OF_N:  # a trained method, none, or NAME+bon (not what versus_best_of_n measures)
        return best
    close = [m for m, e in entries.items() if matches_best_of_n(e)]
    return min(close, key=lambda m: (entries[m]["toxicity"]["after"], list(entries).index(m))) if close else best


def read_method(name: str, samples: str, live: Optional[str]) -> tuple[list[dict], dict, dict]:
    """(sample rows, train.json, timing.json) of one method; the JSON files empty where a method has none."""
    from .io import read_csv, read_json

    live_dir = Path(live) if live else None
    train = read_json(live_dir / "train.json") if live_dir and (live_dir / "train.json").is_file() else {}
    timing = read_json(live_dir / "timing.json") if live_dir and (live_dir / "timing.json").is_file() else {}
    rows = read_csv(samples)
    return (rows if train.get("enabled", True) else []), train, timing


# A method's outcome, decided once (outcome) and read by the answer, each method's line and colour, the qualitative
# tables' focus and publish: only LOWERED qualifies. MARK: the colour each outcome is shown in.
LOWERED, UNCHANGED, UNJUDGED = "lowered toxicity", "no distinguishable change", "could not be judged"
RAISED, CROSSED = "raised toxicity", "crossed a guard"
MARK = {LOWERED: "green", UNCHANGED: "grey", UNJUDGED: "grey", RAISED: "red", CROSSED: "red"}


def toxicity_change(entry: dict) -> str:
    """stats.change of the toxicity's interval: report.min_pairs and a zero-width interval give no verdict."""
    t = entry["toxicity"]
    return change((t["diff_ci_low"], t["diff_ci_high"]), entry["num_prompts"], entry["min_pairs"])


def outcome(entry: dict) -> str:
    """RAISED (interval above 0), else CROSSED (a guard fired), else LOWERED (interval below 0), UNCHANGED (it
    contains 0) or UNJUDGED (too few pairs, or an interval of no width)."""
    what = toxicity_change(entry)
    if what == UP:
        return RAISED
    if crossed_guards(entry["guards"]):
        return CROSSED
    return {DOWN: LOWERED, NO_CHANGE: UNCHANGED, TOO_FEW: UNJUDGED, NO_WIDTH: UNJUDGED}[what]


def qualifies(entry: dict) -> bool:
    """A method the report may name: its outcome is LOWERED (toxicity fell over at least report.min_pairs prompts,
    the whole interval below 0, and no guard was crossed)."""
    return entry.get("enabled", False) and entry["outcome"] == LOWERED


def best_method(entries: dict[str, dict], trained_only: bool = False) -> Optional[str]:
    """The report's answer: the lowest toxicity among the methods that qualify; None if none does."""
    ok = [m for m, e in entries.items() if qualifies(e) and (e["trains_weights"] or not trained_only)]
    return min(ok, key=lambda m: (entries[m]["toxicity"]["after"], list(entries).index(m))) if ok else None


def no_answer(entries: dict[str, dict]) -> str:
    """Why the report names no method (best_method is None): none could be judged, or none lowered toxicity."""
    ran = [e for e in entries.values() if e.get("enabled")]
    if ran and all(toxicity_change(e) in (TOO_FEW, NO_WIDTH) for e in ran):
        n, least = ran[0]["num_prompts"], ran[0]["min_pairs"]
        if n < least:
            return (f"no method could be judged: {n} paired prompt{'s are' if n != 1 else ' is'} too few to tell a "
                    f"real change from chance (report.min_pairs is {least})")
        return ("no method could be judged: every resample gave the same difference, so no interval has a width to "
                "tell a real change from chance")
    return "no method lowered toxicity (its interval below 0) without crossing a guard"


SMOKE_STEPS = 10  # fewer training steps than this cannot move a policy measurably (the smoke preset runs 2)


def smoke(entries: dict[str, dict]) -> Optional[str]:
    """Why this is a smoke-sized run, whose numbers show that the pipeline works and not whether the model got less
    toxic, or None: fewer paired prompts than report.min_pairs, or every trained method ran fewer than SMOKE_STEPS
    training steps (conf/size/smoke.yaml gives both)."""
    ran = [e for e in entries.values() if e.get("enabled")]
    if not ran:
        return None
    why = []
    if ran[0]["num_prompts"] < ran[0]["min_pairs"]:
        why.append(f"{ran[0]['num_prompts']} paired prompts, fewer than report.min_pairs ({ran[0]['min_pairs']})")
    steps = [e["training"]["steps_done"] for e in ran if e["training"].get("steps_done") is not None]
    if steps and max(steps) < SMOKE_STEPS:
        why.append(f"{max(steps)} training steps at most, fewer than {SMOKE_STEPS}")
    return "; ".join(why) or None


def smoke_note(entries: dict[str, dict]) -> Optional[str]:
    """The sentence the report and the model card open with on a smoke-sized run."""
    why = smoke(entries)
    return (f"This is a smoke-sized run: its numbers show the pipeline works, not whether the model got less toxic "
            f"({why}).") if why else None


def choose_published(entries: dict[str, dict], wanted: str) -> tuple[Optional[str], str]:
    """(method, why) for publish.method `wanted`: a method by name, or for `best` the report's answer (when best-of-N
    wins, which has no weights, the best trained method that qualifies). (None, why) when `best` has no trained
    method to name: nothing is published rather than a method that did not lower toxicity."""
    if wanted != "best":
        if not entries.get(wanted, {}).get("enabled"):
            raise PipelineError(f"publish.method is {wanted}, but its comparison file says it did not run; set "
                                f"methods.{wanted}.enabled: true or choose another publish.method")
        return wanted, f"publish.method is {wanted}"
    if not any(e.get("enabled") and e["trains_weights"] for e in entries.values()):
        raise PipelineError("no trained method ran (params.yaml enables one, so metrics/compare is incomplete); rerun "
                            "`dvc repro`")
    best = answer_method(entries)
    if best is not None and entries[best]["trains_weights"]:
        return best, f"the report's answer: {why_answer(entries, best)}"
    trained = best_method(entries, trained_only=True)
    untrained = best is not None and not entries[best]["trains_weights"]
    if untrained and trained:
        return trained, (f"{entries[best]['label']} lowered toxicity most, but it is a sampling procedure with no "
                         f"weights of its own; {entries[trained]['label']} is the best trained method")
    if untrained:
        return None, (f"{entries[best]['label']} lowered toxicity most, but it is a sampling procedure with no weights "
                      "of its own, and no trained method lowered toxicity without crossing a guard")
    return None, no_answer(entries)


HEADLINE_KEYS = ("toxicity", "delta", "lo", "hi", "judge", "ppl", "kl")  # metrics/headline/<method>.json


def _r4(v):
    return None if v is None else round(float(v), 4) + 0.0  # + 0.0: never -0.0


def headline(entry: dict) -> dict:
    """metrics/headline/<method>.json: flat, numeric, short keys, so `dvc metrics show` fits a terminal. toxicity
    after, its difference to the start with the CI, the first judge's difference, perplexity and KL to the start (nats
    per response: kl_to_start); every value null for a method that is off."""
    if not entry.get("enabled"):
        return dict.fromkeys(HEADLINE_KEYS)
    t, judge = entry["toxicity"], next(iter(entry["judges"].values()), None)
    return {"toxicity": _r4(t["after"]), "delta": _r4(t["diff"]), "lo": _r4(t["diff_ci_low"]),
            "hi": _r4(t["diff_ci_high"]), "judge": _r4(judge["toxicity"]["diff"]) if judge else None,
            "ppl": _r4(entry["after"]["perplexity_mean"]),
            "kl": _r4((entry.get("kl_to_start") or {}).get("nats"))}  # per response, every method alike


def headline_start(entry: dict) -> dict:
    """metrics/headline/start.json, from any method's file (they share the start): toxicity, the first judge's
    toxicity and perplexity."""
    judge = next(iter(entry["judges"].values()), None)
    return {"toxicity": _r4(entry["toxicity"]["before"]), "judge": _r4(judge["toxicity"]["before"]) if judge else None,
            "ppl": _r4(entry["before"]["perplexity_mean"])}
