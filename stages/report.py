"""Stage `report`: paired statistics (start, PPO, DPO, best-of-N), guards, and the Markdown/HTML/CSV report.

    python stages/report.py --baseline data/samples/baseline.csv --detoxified data/samples/detoxified.csv \
        --best-of-n data/samples/best_of_n.csv --live metrics/detox --summary metrics/summary.json \
        --best-of-n-summary metrics/best_of_n_summary.json --dpo data/samples/dpo.csv --dpo-live metrics/dpo_train \
        --dpo-summary metrics/dpo_summary.json --out reports

The report leads with the answer (what ran; which method lowered toxicity most with no guard crossed; one
verdict per headline metric; the guards crossed), then shows start, PPO, DPO and best-of-N side by side,
each with its CIs, judges, guards and cost. Markdown and HTML are rendered from one list of sections.
"""
import argparse
import base64
import logging
import math
from pathlib import Path

import numpy as np

from detoxkit import render
from detoxkit.compare import BETTER, check_paired, versus_start
from detoxkit.config import load_params
from detoxkit.evaluation import per_prompt, summarize
from detoxkit.io import atomic_dir, read_csv, read_json, run_stage, write_csv, write_json, write_text
from detoxkit.stats import NA, crossed_guards, improvement_pct, interval_verdict

log = logging.getLogger("detox.report")
def qualitative(before, after) -> list[dict]:
    rows = [{"index": int(b["index"]), "sample": int(b["sample"]),  # a prompt's k samples are k rows
             "prompt": b["prompt"], "response_before": b["response"], "response_after": a["response"],
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
    parser.add_argument("--dpo", help="the evaluate_dpo stage's samples (empty when DPO is off)")
    parser.add_argument("--dpo-live", help="the dpo stage's DVCLive folder (train.json: its cost)")
    parser.add_argument("--dpo-summary", help="where to write DPO against the start (kept out of --summary too)")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()

    params = load_params()
    rp, threshold = params.report, params.evaluation.toxic_threshold
    before, after = read_csv(args.baseline), read_csv(args.detoxified)
    bon = read_csv(args.best_of_n) if args.best_of_n else []
    dpo = read_csv(args.dpo) if args.dpo else []
    check_paired(before, after, "detoxified")
    for rows, what in ((bon, "best-of-n"), (dpo, "the DPO policy")):
        if rows:
            check_paired(before, rows, what)
    m_before = summarize(before, threshold)
    ppo = versus_start(before, after, m_before, threshold, params)  # as DPO and best-of-N are, below
    m_after = ppo.pop("metrics")
    train = read_json(Path(args.live) / "train.json")
    timing = Path(args.live) / "timing.json"
    dpo_train = read_json(Path(args.dpo_live) / "train.json") if args.dpo_live and dpo else {"enabled": False}

    summary = {"setup": {"policy": params.policy.model, "adapter": params.policy.adapter,  # what ran (model card)
                         "reward": params.reward.model, "not_hate_label": params.reward.not_hate_label,
                         "reward_definition": params.reward.describe(),
                         "judges": [j.model for j in params.evaluation.judges],
                         "data_source": params.data.source, "prompt_template": params.prompt.template,
                         "chat_template": params.prompt.chat_template,
                         "reward_include_prompt": params.reward.include_prompt},
               "num_samples": len(before), "num_prompts": m_before["num_prompts"],
               "samples_per_prompt": m_before["samples_per_prompt"], "confidence": rp.confidence,  # of every CI
               "toxic_threshold": threshold, "references": m_before["references"],
               "toxicity_improvement_pct": improvement_pct(m_before["toxicity_mean"], m_after["toxicity_mean"]),
               "before": m_before, "after": m_after}
    summary.update(ppo)  # each metric's paired entry, the judges', the guards
    summary["kl_mean"] = m_after["kl_mean"]
    summary["detox"] = {k: train.get(k) for k in ("steps_done", "early_stopped", "early_stop_step", "settings",
                                                  "rollouts", "optimizer_steps")}
    ppo_wall = read_json(timing)["wall_s"] if timing.is_file() else None  # the report's, not summary.json's
    if bon:
        n = params.best_of_n.n
        summary["best_of_n"] = {"enabled": True, "n": n, "generation_cost": n,  # x the evaluation's generation
                                "kl_bound": math.log(n) - (n - 1) / n,  # nats per response, to the start
                                **versus_start(before, bon, m_before, threshold, params)}
    else:
        summary["best_of_n"] = {"enabled": False}
    if dpo and dpo_train.get("enabled"):
        summary["dpo"] = {"enabled": True, "generation_cost": 1, **versus_start(before, dpo, m_before, threshold, params),
                          "training": {k: dpo_train.get(k) for k in (
                              "pairs", "prompts", "generated_samples", "steps_done", "wall_s", "pairs_wall_s",
                              "train_loss", "settings")}}
    else:
        summary["dpo"] = {"enabled": False}

    with atomic_dir(args.out) as tmp:
        write_reports(tmp, summary, (before, after, bon, dpo), render.read_live_history(args.live), params, ppo_wall)
    bon_summary, dpo_summary = summary.pop("best_of_n"), summary.pop("dpo")
    write_json(args.summary, summary)
    if args.best_of_n_summary:
        write_json(args.best_of_n_summary, bon_summary)
    if args.dpo_summary:  # in summary.json's shape where it counts, so `publish` can serve models/dpo too
        shared = {k: summary[k] for k in ("setup", "num_samples", "num_prompts", "samples_per_prompt", "confidence",
                                          "toxic_threshold", "references")}
        write_json(args.dpo_summary, {**shared, **dpo_summary} if dpo_summary["enabled"] else dpo_summary)
    log.info("toxicity %.4f -> %.4f (%s%%); guards crossed: %s", m_before["toxicity_mean"], m_after["toxicity_mean"],
             "n/a" if summary["toxicity_improvement_pct"] is None else f"{summary['toxicity_improvement_pct']:.1f}",
             crossed_guards(summary["guards"]) or "none")


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
        (f"Data: {p.data.source}; prompt template {p.prompt.template!r}"
         f"{' sent through the tokenizer chat template' if p.prompt.chat_template else ''}; the reward scores "
         f"{'prompt + response' if p.reward.include_prompt else 'the response alone'} (reward.include_prompt "
         f"{str(p.reward.include_prompt).lower()}).", None),
        (f"Reward model: {summary['setup']['reward_definition']}.", None),
        (f"Judges (not the reward model, scoring the responses alone): {judges}.", None),
        (f"Evaluation: {summary['num_prompts']} test prompts, k = {summary['samples_per_prompt']} samples each, "
         f"{ev.max_new_tokens} new tokens at most; a sample is toxic at P >= {summary['toxic_threshold']}. Same "
         "prompts and seed for every policy, so differences are paired by prompt.", None),
        ((f"Best-of-N: n = {b['n']} samples of the starting policy per kept response ({b['n']}x the generation)."
          if b["enabled"] else "Best-of-N: off (best_of_n.enabled is false)."), None),
        (dpo_ran(summary["dpo"]), None),
        (("ROUGE against the references." if summary["references"] else
          "No reference summaries (data.summary_column is null): ROUGE and the sft stage were skipped."), None),
    ]


def dpo_ran(d: dict) -> str:
    if not d["enabled"]:
        return "DPO: off (dpo.enabled is false)."
    t = d["training"]
    st = t["settings"]
    return (f"DPO: LoRA r={st['lora_r']} trained {t['steps_done']} optimizer steps on {t['pairs']} preference pairs "
            f"({t['prompts']} train prompts x {st['n']} samples of the starting policy, chosen and rejected by reward, "
            f"gap >= {st['min_margin']}), beta {st['beta']}, learning rate {st['learning_rate']}; the reference is the "
            "starting policy.")


def methods(summary) -> list[tuple[str, dict]]:
    """The methods compared with the start, as (name, entry), those that ran; PPO's entry is summary itself."""
    out = [("PPO", summary)]
    for key, name in (("dpo", "DPO"), ("best_of_n", "best-of-N")):
        if summary[key]["enabled"]:
            out.append((name, summary[key]))
    return out


def after_metrics(summary, entry) -> dict:
    return summary["after"] if entry is summary else entry["metrics"]


def best_method_line(summary) -> str:
    """The first line of the answer: which method lowered toxicity most (its interval below 0) with no guard
    crossed, and how the others fared."""
    def say(name, e):
        t, crossed = e["toxicity"], crossed_guards(e["guards"])
        return (f"{name} {t['before']:.4f} -> {t['after']:.4f} ({t['diff']:+.4f} [{t['diff_ci_low']:+.4f}, "
                f"{t['diff_ci_high']:+.4f}]; guards crossed: {', '.join(crossed) or 'none'})")

    ranked = methods(summary)
    ok = [(n, e) for n, e in ranked if e["toxicity"]["diff_ci_high"] < 0 and not crossed_guards(e["guards"])]
    rest = "; ".join(say(n, e) for n, e in ranked)
    if not ok:
        return f"No method lowered toxicity (its interval below 0) without crossing a guard. Toxicity: {rest}."
    name, _ = min(ok, key=lambda item: item[1]["toxicity"]["after"])
    return f"Lowest toxicity with no guard crossed: **{name}**. Toxicity (reward model): {rest}."


def guard_lines(summary, limits) -> list:
    why = {"rougeL_drop_exceeded": f"ROUGE-L fell by more than {limits.max_rougeL_drop}",
           "kl_exceeded": f"per-token KL to the start above {limits.max_kl}",
           "length_below_min": f"mean length below {limits.min_mean_length} tokens",
           "perplexity_rise_exceeded": f"perplexity rose more than {limits.max_perplexity_ratio}x",
           "distinct2_below_min": f"distinct-2 fell below {limits.min_distinct2_ratio}x the start's (mode collapse)",
           "judge_disagrees": "the reward model's toxicity fell (CI below 0) but a judge's did not, or by less than "
                              f"{limits.min_judge_agreement} of its relative fall: reward hacking"}
    cannot = {"rougeL_drop_exceeded": "no reference summaries (data.summary_column is null)",
              "judge_disagrees": "no judges (evaluation.judges is [])"}
    return [(f"n/a: {name} cannot fire here: {cannot[name]}", None) if crossed == NA else
            (f"{'CROSSED' if crossed else 'ok'}: {name} ({why[name]})", crossed)
            for name, crossed in summary["guards"].items()]


def side_by_side(summary, ppo_wall) -> tuple[list, list]:
    """Rows: each metric for the start and every method that ran (PPO, DPO, best-of-N), with each one's paired
    difference to the start; then the guards crossed and the cost of each."""
    ms, conf = methods(summary), f"{summary['confidence']:.0%}"
    header = ["metric", "better", "start", *[c for name, _ in ms for c in (name, f"{name} - start [{conf} CI]")]]
    rows = []

    def add(label, better, pick):
        row = [label, better, fmt(pick(summary)["before"])]
        for _, entry in ms:
            s = pick(entry)
            row += [fmt(s["after"]), ci_cell(s)] if s else ["", ""]
        rows.append(row)

    def judge(name, metric):
        return lambda e: e.get("judges", {}).get(name, {}).get(metric)

    for key, label, better in render.HEADLINE:
        if key in summary and key not in ("kl", "distinct_1_per_prompt", "distinct_3_per_prompt"):  # (in the json)
            add(label, better, lambda e, key=key: e.get(key))
        if key == "toxicity_probability":
            for name in summary["judges"]:
                for metric, what in (("toxicity", "toxicity"), ("expected_max_toxicity", "expected max toxicity"),
                                     ("toxicity_probability", "toxicity probability")):
                    add(f"Judge {name}: {what}", "lower", judge(name, metric))
    start = summary["before"]["distinct_2"]
    row = ["Distinct-2 (all responses; no CI)", "higher", fmt(start)]
    for _, e in ms:
        d2 = after_metrics(summary, e)["distinct_2"]
        row += [fmt(d2), f"{d2 - start:+.4f}"]
    rows.append(row)
    kl = {"PPO": fmt(summary["kl_mean"]), "DPO": fmt(summary["dpo"].get("metrics", {}).get("kl_mean")),
          "best-of-N": f"<= {summary['best_of_n'].get('kl_bound', 0):.4f} nats"}
    rows.append(["KL to the start (nats per token; best-of-N: bound per response)", "lower", "0",
                 *[c for name, _ in ms for c in (kl[name], "")]])
    rows.append(["Guards crossed", "none", "", *[c for _, e in ms for c in (
        ", ".join(crossed_guards(e["guards"])) or "none", "")]])
    d = summary["dpo"].get("training", {})
    ppo = summary["detox"]
    cost = {"PPO": (1, ppo.get("rollouts"), ppo.get("optimizer_steps"), ppo_wall),
            "DPO": (1, d.get("generated_samples"), d.get("steps_done"),
                    (d.get("wall_s") or 0) + (d.get("pairs_wall_s") or 0) if d else None),
            "best-of-N": (summary["best_of_n"].get("n"), 0, 0, 0)}
    for i, (label, unit) in enumerate((("Evaluation generation (x one sample a response)", ""),
                                       ("Training: responses generated (PPO rollouts; DPO pair samples)", ""),
                                       ("Training: optimizer steps", ""), ("Training: wall time", " s"))):
        cells = [c for name, _ in ms for c in ("n/a" if cost[name][i] is None else
                                               f"{cost[name][i]:.0f}{unit}" if unit else str(cost[name][i]), "")]
        rows.append([label, "lower", "1" if i == 0 else "0", *cells])
    return header, rows


def verdict_lines(summary, min_pairs) -> list:
    n, lines = summary["num_prompts"], []
    for name, source in methods(summary):
        who = name[0].upper() + name[1:]  # a sentence starts with it: "Best-of-N vs start"
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


def write_reports(out: Path, summary, samples, history, params, ppo_wall=None):
    """report.md (+ its PNG figures), report.html, qualitative.csv, toxicity_hist.csv and
    per_prompt_max_toxicity.csv, from one list of sections."""
    before, after, bon, dpo = samples
    n_rows, threshold = params.report.qualitative_rows, summary["toxic_threshold"]
    tox = summary["toxicity"]
    lab = ("Lab formula, toxicity improvement (before - after) / before x 100: " +
           ("n/a" if tox["improvement_pct"] is None else f"{tox['improvement_pct']:.2f}% ({summary['confidence']:.0%}"
            f" CI [{fmt(tox['improvement_pct_ci_low'], '.2f')}%, {fmt(tox['improvement_pct_ci_high'], '.2f')}%]); "
            "positive means less toxic."))
    crossed = crossed_guards(summary["guards"])
    qual = qualitative(before, after)
    best, worst = qual[:n_rows], qual[::-1][:n_rows]
    header, rows = side_by_side(summary, ppo_wall)
    b = summary["before"]
    diversity = (f"Diversity (distinct-1 / 2 / 3 over all responses, higher is more varied): start "
                 f"{b['distinct_1']:.3f}"
                 f" / {b['distinct_2']:.3f} / {b['distinct_3']:.3f}, PPO {summary['after']['distinct_1']:.3f} / "
                 f"{summary['after']['distinct_2']:.3f} / {summary['after']['distinct_3']:.3f}.")
    worst_start = per_prompt(before, threshold)["max_toxicity"]
    ran = {"PPO": after, **({"DPO": dpo} if summary["dpo"]["enabled"] else {}), **({"best-of-N": bon} if bon else {})}
    others = {name: per_prompt(rows, threshold)["max_toxicity"] for name, rows in ran.items()}
    tox_series = {"start": np.array([float(r["toxicity"]) for r in before]),
                  **{name: np.array([float(r["toxicity"]) for r in rows]) for name, rows in ran.items()}}
    images = {"max_toxicity_per_prompt.png": render.max_toxicity_figure(worst_start, others),
              "training_curves.png": render.training_figure(history),
              "toxicity_hist.png": render.histogram_figure(tox_series)}
    sections = [
        ("What ran", [("list", what_ran(summary, params))]),
        ("Answer", [("p", best_method_line(summary)), ("list", verdict_lines(summary, params.report.min_pairs)),
                    ("p", lab)]),
        ("Guards against reward hacking", [
            ("p", f"Crossed: {', '.join(crossed)}." if crossed else "No guard was crossed" + (
                " (n/a: " + ", ".join(k for k, v in summary["guards"].items() if v == NA) + " cannot fire here)."
                if NA in summary["guards"].values() else ".")),
            ("list", guard_lines(summary, params.guard))]),
        (f"Start, {', '.join(ran)} side by side".replace(", best-of-N", " and best-of-N")
         .replace("PPO, DPO side", "PPO and DPO side"), [
            ("p", "Means over the paired test prompts; each difference to the start has a bootstrap CI over prompts "
                  "(each prompt's k samples resampled together). 'better' names the good direction."),
            ("table", header, rows), ("p", diversity)]),
        ("Maximum toxicity per prompt", [
            ("p", "Each point is a prompt: its worst (most toxic) of k samples at the start against after. Below the "
                  "diagonal, the worst case improved."),
            ("figure", "max_toxicity_per_prompt.png", "maximum toxicity per prompt, start vs after")]),
        ("PPO training curves", [
            ("p", "KL to reference is TRL's objective/kl: the KL of each response to the reference, summed over its "
                  "tokens (nats per response), averaged over the batch; early steps can dip below 0 (an estimate "
                  "from samples). The table's KL is per token."),
            ("figure", "training_curves.png", "training curves")]),
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
            "dpo": float(others["DPO"][i]) if "DPO" in others else "",
            "best_of_n": float(others["best-of-N"][i]) if bon else ""} for i in range(len(worst_start))]
    write_csv(out / "per_prompt_max_toxicity.csv", per, ["prompt", "start", "ppo", "dpo", "best_of_n"])


if __name__ == "__main__":
    run_stage(main)
