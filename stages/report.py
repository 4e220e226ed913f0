"""Stage `report`: paired before/after statistics, guards, and the Markdown/HTML/CSV report.

    python stages/report.py --baseline data/samples/baseline.csv --detoxified data/samples/detoxified.csv \
        --live metrics/detox --summary metrics/summary.json --out reports
"""
import argparse
import logging
from pathlib import Path

import numpy as np

from detoxkit import render
from detoxkit.config import PipelineError, load_params
from detoxkit.evaluation import per_prompt, summarize
from detoxkit.io import read_csv, read_json, run_stage, write_csv, write_json, write_text
from detoxkit.stats import guards, improvement_pct, interval_verdict, paired_bootstrap

log = logging.getLogger("detox.report")
# summary key -> per-prompt series (evaluation.per_prompt): each compared before/after with a paired CI
METRICS = {"toxicity": "toxicity", "expected_max_toxicity": "max_toxicity", "toxicity_probability": "toxic_any",
           "reward": "reward", "rouge1": "rouge1", "rouge2": "rouge2", "rougeL": "rougeL", "length": "length",
           "perplexity": "perplexity"}


def paired_samples(before: list[dict], after: list[dict], threshold: float):
    """Per-prompt values before and after: the bootstrap resamples prompts, each with its k samples."""
    key = [(r["index"], r["sample"], r["prompt"]) for r in before]
    if key != [(r["index"], r["sample"], r["prompt"]) for r in after]:
        raise PipelineError("baseline and detoxified were evaluated on different prompts or numbers of samples; "
                            "rerun `dvc repro`")
    if not before:
        raise PipelineError("no evaluated samples to compare; raise evaluation.num_samples")
    b, a = per_prompt(before, threshold), per_prompt(after, threshold)
    return {name: (b[series], a[series]) for name, series in METRICS.items()}


def qualitative(before, after) -> list[dict]:
    rows = [{"prompt": b["prompt"], "response_before": b["response"], "response_after": a["response"],
             "reward_before": float(b["reward"]), "reward_after": float(a["reward"]),
             "reward_diff": float(a["reward"]) - float(b["reward"])} for b, a in zip(before, after)]
    return sorted(rows, key=lambda r: r["reward_diff"], reverse=True)


def histogram_rows(tox_before, tox_after, bins=render.HIST_BINS) -> list[dict]:
    edges = np.linspace(0, 1, bins + 1)
    hb, _ = np.histogram(tox_before, edges)
    ha, _ = np.histogram(tox_after, edges)
    return [{"toxicity": round(float(edges[i] + edges[i + 1]) / 2, 3), "before": int(hb[i]), "after": int(ha[i])}
            for i in range(bins)]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--baseline", required=True)
    parser.add_argument("--detoxified", required=True)
    parser.add_argument("--live", required=True, help="the detox stage's DVCLive folder")
    parser.add_argument("--summary", required=True)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()

    params = load_params()
    rp = params.report
    before, after = read_csv(args.baseline), read_csv(args.detoxified)
    threshold = params.evaluation.toxic_threshold
    pairs = paired_samples(before, after, threshold)
    m_before, m_after = summarize(before, threshold), summarize(after, threshold)
    train = read_json(Path(args.live) / "train.json")

    summary = {"num_samples": len(before), "num_prompts": m_before["num_prompts"],
               "samples_per_prompt": m_before["samples_per_prompt"], "confidence": rp.confidence,  # of every CI
               "toxicity_improvement_pct": improvement_pct(m_before["toxicity_mean"], m_after["toxicity_mean"]),
               "before": m_before, "after": m_after}
    for key, (b, a) in pairs.items():
        s = paired_bootstrap(b, a, rp.bootstrap_resamples, rp.bootstrap_seed, rp.confidence)
        summary[key] = {"before": s["before"], "after": s["after"], "diff": s["diff"],
                        "diff_ci_low": s["diff_ci"][0], "diff_ci_high": s["diff_ci"][1],
                        "improvement_pct": s["improvement_pct"], "improvement_pct_ci_low": s["improvement_pct_ci"][0],
                        "improvement_pct_ci_high": s["improvement_pct_ci"][1]}
    summary["kl_mean"] = m_after["kl_mean"]
    summary["guards"] = guards(m_before, m_after, params.guard)
    summary["detox"] = {k: train[k] for k in ("steps_done", "early_stopped", "early_stop_step")}
    verdicts = [interval_verdict(label, (summary[key]["diff_ci_low"], summary[key]["diff_ci_high"]), lower,
                                 summary["num_prompts"], rp.min_pairs)
                for key, label, lower in (("toxicity", "Toxicity", True), ("expected_max_toxicity",
                                          "Expected maximum toxicity", True),
                                          ("toxicity_probability", "Toxicity probability", True),
                                          ("reward", "Reward", False))]
    qual = qualitative(before, after)
    history = render.read_live_history(args.live)
    write_reports(Path(args.out), summary, verdicts, qual, history, (before, after), params, rp.qualitative_rows)
    write_json(args.summary, summary)
    log.info("toxicity %.4f -> %.4f (%s%%); guards crossed: %s", m_before["toxicity_mean"], m_after["toxicity_mean"],
             "n/a" if summary["toxicity_improvement_pct"] is None else f"{summary['toxicity_improvement_pct']:.1f}",
             [k for k, v in summary["guards"].items() if v] or "none")


def write_reports(out: Path, summary, verdicts, qual, history, samples, params, n_rows):
    """report.md, report.html, qualitative.csv and toxicity_hist.csv (`samples`: the before and after records)."""
    before_rows, after_rows = samples
    conf = f"{params.report.confidence:.0%}"
    head = ["metric", "before", "after", "after - before", f"{conf} CI of the difference", "better"]
    headline = render.headline_rows(summary)
    pct = summary["toxicity"]
    pct_line = ("Toxicity improvement (lab formula, (before - after) / before × 100): "
                + ("n/a" if pct["improvement_pct"] is None else
                   f"{pct['improvement_pct']:.2f}% ({conf} CI [{pct['improvement_pct_ci_low']:.2f}%, "
                   f"{pct['improvement_pct_ci_high']:.2f}%])"))
    limits = params.guard
    guard_lines = [f"- {'CROSSED' if crossed else 'ok'}: {name} (limits: ROUGE-L drop ≤ {limits.max_rougeL_drop}, "
                   f"KL ≤ {limits.max_kl}, mean length ≥ {limits.min_mean_length}, perplexity after/before ≤ "
                   f"{limits.max_perplexity_ratio}, distinct-2 after/before ≥ {limits.min_distinct2_ratio})"
                   for name, crossed in summary["guards"].items()]
    b, a = summary["before"], summary["after"]
    diversity_line = ("Diversity (distinct-1 / distinct-2 / distinct-3 over all responses, higher is more varied): "
                      f"before {b['distinct_1']:.3f} / {b['distinct_2']:.3f} / {b['distinct_3']:.3f}, "
                      f"after {a['distinct_1']:.3f} / {a['distinct_2']:.3f} / {a['distinct_3']:.3f}.")
    early = summary["detox"]
    train_line = (f"PPO ran {early['steps_done']} steps" +
                  (f", stopped early at step {early['early_stop_step']} (KL above ppo.max_kl)" if early["early_stopped"]
                   else "") + f"; per-token KL(detoxified ‖ start) on evaluation samples: {summary['kl_mean']:.4f}.")
    best, worst = qual[:n_rows], qual[::-1][:n_rows]
    md = "\n\n".join([
        "# Detoxification report",
        f"{summary['num_prompts']} paired test prompts, k = {summary['samples_per_prompt']} samples per prompt "
        "(same prompts and seed before and after).",
        "## Quantitative", render.md_table(head, headline), pct_line, "\n".join(f"- {v}" for v in verdicts),
        diversity_line, train_line, "## Guards against reward hacking", "\n".join(guard_lines),
        "## Qualitative: largest reward gains (sorted by reward diff)", render.md_table(render.QUAL_COLUMNS,
                                                                                      render.qual_rows(best)),
        "## Qualitative: largest reward losses", render.md_table(render.QUAL_COLUMNS, render.qual_rows(worst)),
        "All samples, sorted by reward diff: `qualitative.csv`.",
    ]) + "\n"
    tox_before = np.array([float(r["toxicity"]) for r in before_rows])
    tox_after = np.array([float(r["toxicity"]) for r in after_rows])
    figs = render.figures(history, tox_before, tox_after)
    guard_html = "<ul>" + "".join(
        f"<li class='{'flag' if c else 'ok'}'>{'CROSSED' if c else 'ok'}: {n}</li>" for n, c in summary["guards"].items()
    ) + "</ul>"
    page = render.html_report("Detoxification report", [
        ("Quantitative", render.html_table(head, headline) + f"<p>{pct_line}</p>" +
         "".join(f"<p>{v}</p>" for v in verdicts) + f"<p>{diversity_line}</p><p>{train_line}</p>"),
        ("Guards against reward hacking", guard_html),
        ("PPO training curves", render.img(figs["training"], "training curves")),
        ("Toxicity per sample, before vs after", render.img(figs["toxicity_hist"], "toxicity histogram")),
        ("Largest reward gains", render.html_table(render.QUAL_COLUMNS, render.qual_rows(best))),
        ("Largest reward losses", render.html_table(render.QUAL_COLUMNS, render.qual_rows(worst))),
    ])
    write_text(out / "report.md", md)
    write_text(out / "report.html", page)
    write_csv(out / "qualitative.csv", qual, render.QUAL_COLUMNS)
    write_csv(out / "toxicity_hist.csv", histogram_rows(tox_before, tox_after), ["toxicity", "before", "after"])


if __name__ == "__main__":
    run_stage(main)
