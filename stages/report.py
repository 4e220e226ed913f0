"""Stage `report`: paired statistics (start, PPO, best-of-N), guards, and the Markdown/HTML/CSV report.

    python stages/report.py --baseline data/samples/baseline.csv --detoxified data/samples/detoxified.csv \
        --best-of-n data/samples/best_of_n.csv --live metrics/detox --summary metrics/summary.json \
        --best-of-n-summary metrics/best_of_n_summary.json --out reports

The report leads with the answer (what ran, one verdict per headline metric, the guards crossed), then
shows start, PPO and best-of-N side by side. Markdown and HTML are rendered from one list of sections.
"""
import argparse
import base64
import logging
import math
from pathlib import Path

import numpy as np

from detoxkit import render
from detoxkit.config import PipelineError, load_params
from detoxkit.evaluation import JUDGE, judge_names, per_prompt, summarize
from detoxkit.io import atomic_dir, read_csv, read_json, run_stage, write_csv, write_json, write_text
from detoxkit.stats import guards, improvement_pct, interval_verdict, paired_bootstrap

log = logging.getLogger("detox.report")
# summary key -> per-prompt series (evaluation.per_prompt): each compared with the start with a paired CI
METRICS = {"toxicity": "toxicity", "expected_max_toxicity": "max_toxicity", "toxicity_probability": "toxic_any",
           "reward": "reward", "rouge1": "rouge1", "rouge2": "rouge2", "rougeL": "rougeL", "length": "length",
           "perplexity": "perplexity", "kl": "kl", **{f"distinct_{n}_per_prompt": f"distinct_{n}_per_prompt"
                                                      for n in (1, 2, 3)}}
JUDGE_METRICS = {"toxicity": "", "expected_max_toxicity": "_max", "toxicity_probability": "_any"}
BETTER = {key: better for key, _, better in render.HEADLINE}


def check_paired(before: list[dict], other: list[dict], what: str):
    key = [(r["index"], r["sample"], r["prompt"]) for r in before]
    if key != [(r["index"], r["sample"], r["prompt"]) for r in other]:
        raise PipelineError(f"baseline and {what} were evaluated on different prompts or numbers of samples; "
                            "rerun `dvc repro`")
    if not before:
        raise PipelineError("no evaluated samples to compare; raise evaluation.num_samples")


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
    if key.endswith("toxicity"):  # the lab's formula, named as the lab names it
        entry.update(improvement_pct=s["improvement_pct"], improvement_pct_ci_low=lo, improvement_pct_ci_high=hi)
    return entry


def compare(before: list[dict], other: list[dict], threshold: float, rp) -> tuple[dict, dict]:
    """Every metric both sides have, per prompt, as a paired_entry; and {judge: {metric: paired_entry}}."""
    b, a = per_prompt(before, threshold), per_prompt(other, threshold)
    metrics = {key: paired_entry(key, b[col], a[col], rp) for key, col in METRICS.items() if col in b and col in a}
    judges = {name: {key: paired_entry(key, b[f"{JUDGE}{name}{suffix}"], a[f"{JUDGE}{name}{suffix}"], rp)
                     for key, suffix in JUDGE_METRICS.items()} for name in judge_names(before)}
    return metrics, judges


def relative_fall(s: dict) -> float:
    return -s["diff"] / s["before"] if s["before"] > 0 else 0.0


def judge_disagrees(summary: dict, min_agreement: float) -> bool:
    """The reward-hacking signature: the reward classifier's toxicity falls by more than its CI (the whole
    interval below 0), but some judge's toxicity does not fall (its interval reaches 0), rises, or falls by
    less than `min_agreement` of the reward's relative fall (a 90% fall the judge sees as 0.5% is no
    detoxification, however narrow the judge's interval)."""
    reward = summary["toxicity"]
    if not reward["diff_ci_high"] < 0:
        return False
    return any(j["toxicity"]["diff_ci_high"] >= 0 or
               relative_fall(j["toxicity"]) < min_agreement * relative_fall(reward) for j in summary["judges"].values())


def qualitative(before, after) -> list[dict]:
    rows = [{"prompt": b["prompt"], "response_before": b["response"], "response_after": a["response"],
             "reward_before": float(b["reward"]), "reward_after": float(a["reward"]),
             "reward_diff": float(a["reward"]) - float(b["reward"])} for b, a in zip(before, after)]
    return sorted(rows, key=lambda r: r["reward_diff"], reverse=True)


def histogram_rows(series: dict[str, np.ndarray], bins=render.HIST_BINS) -> list[dict]:
    edges = np.linspace(0, 1, bins + 1)
    counts = {name: np.histogram(values, edges)[0] for name, values in series.items()}
    return [{"toxicity": round(float(edges[i] + edges[i + 1]) / 2, 3), **{n: int(c[i]) for n, c in counts.items()}}
            for i in range(bins)]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--baseline", required=True)
    parser.add_argument("--detoxified", required=True)
    parser.add_argument("--best-of-n", help="the best_of_n stage's samples (empty when it is disabled)")
    parser.add_argument("--live", required=True, help="the detox stage's DVCLive folder")
    parser.add_argument("--summary", required=True)
    parser.add_argument("--best-of-n-summary", help="where to write best-of-n against the start (kept out of "
                        "--summary, so toggling best-of-n changes nothing downstream of the PPO comparison)")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()

    params = load_params()
    rp, threshold = params.report, params.evaluation.toxic_threshold
    before, after = read_csv(args.baseline), read_csv(args.detoxified)
    bon = read_csv(args.best_of_n) if args.best_of_n else []
    check_paired(before, after, "detoxified")
    if bon:
        check_paired(before, bon, "best-of-n")
    m_before, m_after = summarize(before, threshold), summarize(after, threshold)
    train = read_json(Path(args.live) / "train.json")

    summary = {"setup": {"policy": params.policy.model, "adapter": params.policy.adapter,  # what ran (model card)
                         "reward": params.reward.model, "not_hate_label": params.reward.not_hate_label,
                         "reward_definition": params.reward.describe(),
                         "judges": [j.model for j in params.evaluation.judges]},
               "num_samples": len(before), "num_prompts": m_before["num_prompts"],
               "samples_per_prompt": m_before["samples_per_prompt"], "confidence": rp.confidence,  # of every CI
               "toxic_threshold": threshold, "references": m_before["references"],
               "toxicity_improvement_pct": improvement_pct(m_before["toxicity_mean"], m_after["toxicity_mean"]),
               "before": m_before, "after": m_after}
    ppo, summary["judges"] = compare(before, after, threshold, rp)
    summary.update(ppo)
    summary["kl_mean"] = m_after["kl_mean"]
    summary["guards"] = guards(m_before, m_after, params.guard)
    summary["guards"]["judge_disagrees"] = judge_disagrees(summary, params.guard.min_judge_agreement)
    summary["detox"] = {k: train.get(k) for k in ("steps_done", "early_stopped", "early_stop_step", "settings")}
    if bon:
        n = params.best_of_n.n
        metrics, judges = compare(before, bon, threshold, rp)
        summary["best_of_n"] = {"enabled": True, "n": n, "generation_cost": n,  # x the evaluation's generation
                                "kl_bound": math.log(n) - (n - 1) / n,  # nats per response, to the start
                                "metrics": summarize(bon, threshold), **metrics, "judges": judges}
    else:
        summary["best_of_n"] = {"enabled": False}

    with atomic_dir(args.out) as tmp:
        write_reports(tmp, summary, (before, after, bon), render.read_live_history(args.live), params)
    bon_summary = summary.pop("best_of_n")
    write_json(args.summary, summary)
    if args.best_of_n_summary:
        write_json(args.best_of_n_summary, bon_summary)
    log.info("toxicity %.4f -> %.4f (%s%%); guards crossed: %s", m_before["toxicity_mean"], m_after["toxicity_mean"],
             "n/a" if summary["toxicity_improvement_pct"] is None else f"{summary['toxicity_improvement_pct']:.1f}",
             [k for k, v in summary["guards"].items() if v] or "none")


def fmt(v, spec=".4f"):
    return "n/a" if v is None else format(v, spec)


def ci_cell(s: dict) -> str:
    return f"{s['diff']:+.4f} [{s['diff_ci_low']:+.4f}, {s['diff_ci_high']:+.4f}]"


def what_ran(summary, params) -> list:
    p, ev, b = params, params.evaluation, summary["best_of_n"]
    early, ran = summary["detox"], summary["detox"]["settings"]  # the settings the detox stage ran with
    judges = ", ".join(j.describe() for j in ev.judges) or "none (evaluation.judges is [])"
    ppo = (f"PPO trained LoRA r={ran['lora_r']} for {early['steps_done']} of {ran['max_steps']} steps" +
           (f", stopped early at step {early['early_stop_step']} (KL above ppo.max_kl)" if early["early_stopped"]
            else "") + f" (learning rate {ran['learning_rate']}, KL coefficient {ran['init_kl_coef']}"
           f"{', adaptive' if ran['adaptive_kl'] else ''}, batch {ran['batch_size']})" if ran else
           f"PPO ran {early['steps_done']} steps")
    return [
        (f"Policy: {p.policy.model}, starting adapter {p.policy.adapter or 'none'}; {ppo}.", None),
        (f"Reward model: {summary['setup']['reward_definition']}.", None),
        (f"Judges (not the reward model, scoring the responses alone): {judges}.", None),
        (f"Evaluation: {summary['num_prompts']} test prompts, k = {summary['samples_per_prompt']} samples each, "
         f"{ev.max_new_tokens} new tokens at most; a sample is toxic at P >= {summary['toxic_threshold']}. Same "
         "prompts and seed for every policy, so differences are paired by prompt.", None),
        ((f"Best-of-N: n = {b['n']} samples of the starting policy per kept response ({b['n']}x the generation)."
          if b["enabled"] else "Best-of-N: off (best_of_n.enabled is false)."), None),
        (("ROUGE against the references." if summary["references"] else
          "No reference summaries (data.summary_column is null): ROUGE and the sft stage were skipped."), None),
    ]


def guard_lines(summary, limits) -> list:
    why = {"rougeL_drop_exceeded": f"ROUGE-L fell by more than {limits.max_rougeL_drop}",
           "kl_exceeded": f"per-token KL to the start above {limits.max_kl}",
           "length_below_min": f"mean length below {limits.min_mean_length} tokens",
           "perplexity_rise_exceeded": f"perplexity rose more than {limits.max_perplexity_ratio}x",
           "distinct2_below_min": f"distinct-2 fell below {limits.min_distinct2_ratio}x the start's (mode collapse)",
           "judge_disagrees": "the reward model's toxicity fell (CI below 0) but a judge's did not, or by less than "
                              f"{limits.min_judge_agreement} of its relative fall: reward hacking"}
    lines = [(f"{'CROSSED' if crossed else 'ok'}: {name} ({why[name]})", crossed)
             for name, crossed in summary["guards"].items()]
    if not summary["references"]:
        lines.append(("not applicable: rougeL_drop_exceeded (no references)", None))
    if not summary["judges"]:
        lines.append(("judge_disagrees cannot be set: no judges (evaluation.judges is [])", None))
    return lines


def side_by_side(summary) -> tuple[list, list]:
    """Rows: each metric for start, PPO and best-of-N, with each one's paired difference to the start."""
    b, conf = summary["best_of_n"], f"{summary['confidence']:.0%}"
    header = ["metric", "better", "start", "PPO", f"PPO - start [{conf} CI]"]
    header += ["best-of-N", f"best-of-N - start [{conf} CI]"] if b["enabled"] else []
    rows = []

    def add(label, better, ppo, bon):
        row = [label, better, fmt(ppo["before"]), fmt(ppo["after"]), ci_cell(ppo)]
        rows.append(row + ([fmt(bon["after"]), ci_cell(bon)] if b["enabled"] else []))

    for key, label, better in render.HEADLINE:
        if key in summary and key not in ("kl", "distinct_1_per_prompt", "distinct_3_per_prompt"):  # (in the json)
            add(label, better, summary[key], b.get(key))
        if key == "toxicity_probability":
            for name, metrics in summary["judges"].items():
                for metric, what in (("toxicity", "toxicity"), ("expected_max_toxicity", "expected max toxicity"),
                                     ("toxicity_probability", "toxicity probability")):
                    add(f"Judge {name}: {what}", "lower", metrics[metric],
                        b.get("judges", {}).get(name, {}).get(metric))
    start, ppo = summary["before"]["distinct_2"], summary["after"]["distinct_2"]
    row = ["Distinct-2 (all responses; no CI)", "higher", fmt(start), fmt(ppo), f"{ppo - start:+.4f}"]
    bon = b["metrics"]["distinct_2"] if b["enabled"] else None
    rows.append(row + ([fmt(bon), f"{bon - start:+.4f}"] if b["enabled"] else []))
    row = ["KL to the start (per token; best-of-N: bound per response)", "lower", "0", fmt(summary["kl_mean"]), ""]
    rows.append(row + ([f"<= {b['kl_bound']:.4f} nats", ""] if b["enabled"] else []))
    row = ["Generation cost (x one sample a response)", "lower", "1", "1", ""]
    rows.append(row + ([str(b["n"]), ""] if b["enabled"] else []))
    return header, rows


def verdict_lines(summary, min_pairs) -> list:
    n, lines = summary["num_prompts"], []
    targets = [(summary, "PPO")] + ([(summary["best_of_n"], "Best-of-N")] if summary["best_of_n"]["enabled"] else [])
    for source, who in targets:
        for key, label in (("toxicity", "toxicity"), ("expected_max_toxicity", "expected maximum toxicity"),
                           ("toxicity_probability", "toxicity probability"), ("perplexity", "perplexity"),
                           ("distinct_2_per_prompt", "distinct-2 within a prompt's samples")):
            s = source[key]
            lines.append(interval_verdict(f"{who} vs start, {label}", (s["diff_ci_low"], s["diff_ci_high"]),
                                          BETTER[key] == "lower", n, min_pairs))
        for name, metrics in source["judges"].items():
            s = metrics["toxicity"]
            lines.append(interval_verdict(f"{who} vs start, judge {name} toxicity", (s["diff_ci_low"],
                                          s["diff_ci_high"]), True, n, min_pairs))
    return [(line, None) for line in lines]


def write_reports(out: Path, summary, samples, history, params):
    """report.md (+ its PNG figures), report.html, qualitative.csv, toxicity_hist.csv and
    per_prompt_max_toxicity.csv, from one list of sections."""
    before, after, bon = samples
    n_rows, threshold = params.report.qualitative_rows, summary["toxic_threshold"]
    tox = summary["toxicity"]
    lab = ("Lab formula, toxicity improvement (before - after) / before x 100: " +
           ("n/a" if tox["improvement_pct"] is None else f"{tox['improvement_pct']:.2f}% ({summary['confidence']:.0%}"
            f" CI [{fmt(tox['improvement_pct_ci_low'], '.2f')}%, {fmt(tox['improvement_pct_ci_high'], '.2f')}%]); "
            "positive means less toxic."))
    crossed = [name for name, c in summary["guards"].items() if c]
    qual = qualitative(before, after)
    best, worst = qual[:n_rows], qual[::-1][:n_rows]
    header, rows = side_by_side(summary)
    b = summary["before"]
    diversity = (f"Diversity (distinct-1 / 2 / 3 over all responses, higher is more varied): start "
                 f"{b['distinct_1']:.3f}"
                 f" / {b['distinct_2']:.3f} / {b['distinct_3']:.3f}, PPO {summary['after']['distinct_1']:.3f} / "
                 f"{summary['after']['distinct_2']:.3f} / {summary['after']['distinct_3']:.3f}.")
    worst_start = per_prompt(before, threshold)["max_toxicity"]
    others = {"PPO": per_prompt(after, threshold)["max_toxicity"]}
    if bon:
        others["best-of-N"] = per_prompt(bon, threshold)["max_toxicity"]
    tox_series = {"start": np.array([float(r["toxicity"]) for r in before]),
                  "PPO": np.array([float(r["toxicity"]) for r in after])}
    if bon:
        tox_series["best-of-N"] = np.array([float(r["toxicity"]) for r in bon])
    images = {"max_toxicity_per_prompt.png": render.max_toxicity_figure(worst_start, others),
              "training_curves.png": render.training_figure(history),
              "toxicity_hist.png": render.histogram_figure(tox_series)}
    sections = [
        ("What ran", [("list", what_ran(summary, params))]),
        ("Answer", [("list", verdict_lines(summary, params.report.min_pairs)), ("p", lab)]),
        ("Guards against reward hacking", [
            ("p", f"Crossed: {', '.join(crossed)}." if crossed else "No guard was crossed."),
            ("list", guard_lines(summary, params.guard))]),
        ("Start, PPO and best-of-N side by side", [
            ("p", "Means over the paired test prompts; each difference to the start has a bootstrap CI over prompts "
                  "(each prompt's k samples resampled together). 'better' names the good direction."),
            ("table", header, rows), ("p", diversity)]),
        ("Maximum toxicity per prompt", [
            ("p", "Each point is a prompt: its worst (most toxic) of k samples at the start against after. Below the "
                  "diagonal, the worst case improved."),
            ("figure", "max_toxicity_per_prompt.png", "maximum toxicity per prompt, start vs after")]),
        ("PPO training curves", [("figure", "training_curves.png", "training curves")]),
        ("Toxicity per sample", [("figure", "toxicity_hist.png", "toxicity histogram")]),
        ("Largest reward gains (PPO vs start, sorted by reward diff)", [
            ("table", render.QUAL_COLUMNS, render.qual_rows(best))]),
        ("Largest reward losses", [("table", render.QUAL_COLUMNS, render.qual_rows(worst)),
                                   ("p", "All samples, sorted by reward diff: qualitative.csv.")]),
    ]
    for name, b64 in images.items():
        (out / name).write_bytes(base64.b64decode(b64))
    write_text(out / "report.md", render.to_markdown("Detoxification report", sections))
    write_text(out / "report.html", render.to_html("Detoxification report", sections, images))
    write_csv(out / "qualitative.csv", qual, render.QUAL_COLUMNS)
    write_csv(out / "toxicity_hist.csv", histogram_rows({"before": tox_series["start"], "after": tox_series["PPO"]}),
              ["toxicity", "before", "after"])
    per = [{"prompt": i, "start": float(worst_start[i]), "ppo": float(others["PPO"][i]),
            "best_of_n": float(others["best-of-N"][i]) if bon else ""} for i in range(len(worst_start))]
    write_csv(out / "per_prompt_max_toxicity.csv", per, ["prompt", "start", "ppo", "best_of_n"])


if __name__ == "__main__":
    run_stage(main)
