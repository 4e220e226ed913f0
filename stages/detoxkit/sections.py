"""The report's sections, built from the comparison entries (detoxkit.compare.method_entry) of every method that
ran. Nothing here is written per method: a new method is a new entry, and its row, column and line follow.
A section is (heading, blocks) for render.to_markdown / render.to_html; report() gives the title (the answer) and
every section in order."""
from __future__ import annotations

import numpy as np

from .compare import MARK, answer_method, best_method, no_answer, smoke_note, why_answer
from .methods import methods_of
from .render import HEADLINE, HIST_BINS, QUAL_COLUMNS, qual_rows
from .stats import NA, crossed_guards, interval_verdict


def fmt(v, spec=".4f"):
    return "n/a" if v is None else format(v, spec)


def ci_cell(s: dict) -> str:
    return f"{s['diff']:+.4f} [{s['diff_ci_low']:+.4f}, {s['diff_ci_high']:+.4f}]"


def answer(entries: dict[str, dict]) -> str:
    """The report's first line: the answer (compare.answer_method: the lowest toxicity that lowered it with no guard
    crossed, or a trained method that matches best-of-N when best-of-N is lowest) with its numbers and any judge too
    weak to confirm it; or why no method is named."""
    best = answer_method(entries)
    if best is None:
        return f"Answer: {no_answer(entries)}."
    e, t = entries[best], entries[best]["toxicity"]
    label = e["label"]
    text = (f"Answer: {why_answer(entries, best)} ({t['before']:.4f} -> {t['after']:.4f}, {ci_cell(t)} over "
            f"{e['num_prompts']} paired prompts)")
    blind = [name for name, power in e["judge_power"].items() if power["reason"]]
    if blind:
        text += f"; the judge {', '.join(blind)} could not confirm it (too weak to see the fall; see {label}'s line)"
    if not e["trains_weights"]:
        trained = best_method(entries, trained_only=True)
        text += (f"; {label} has no weights, so publish.method best packs {entries[trained]['label']}" if trained else
                 f"; {label} has no weights, and no trained method lowered toxicity, so publish.method best "
                 "publishes nothing")
    return text + "."


def method_lines(entries: dict[str, dict]) -> list:
    """One line per method, coloured by its outcome (compare.MARK): what it did, toxicity with its CI and verdict,
    each judge (and whether it could confirm the fall), the guards crossed."""
    lines = []
    for method, e in entries.items():
        t, crossed = e["toxicity"], crossed_guards(e["guards"])
        judges = "; ".join(f"judge {name} {ci_cell(j['toxicity'])}" + (
            f" (could not confirm the fall: {e['judge_power'][name]['reason']})" if e["judge_power"][name]["reason"]
            else "") for name, j in e["judges"].items()) or "no judges"
        verdict = interval_verdict(f"{e['label']} vs start, toxicity", (t["diff_ci_low"], t["diff_ci_high"]), True,
                                   e["num_prompts"], e["min_pairs"])
        vs = e.get("versus_best_of_n")
        versus = f"; against best-of-N {ci_cell(vs['toxicity'])} ({vs['change']})" if vs else ""
        lines.append((f"{e['label']} ({e['outcome']}): toxicity {t['before']:.4f} -> {t['after']:.4f}, "
                      f"{ci_cell(t)}{versus}; {judges}; guards crossed: {', '.join(crossed) or 'none'}. {verdict}",
                      MARK[e["outcome"]]))
    return lines


def what_ran(entries: dict[str, dict], params) -> list:
    p, ev = params, params.evaluation
    any_entry = next(iter(entries.values()))
    judges = ", ".join(j.describe() for j in ev.judges) or "none (evaluation.judges is [])"
    lines = [
        f"Policy: {p.policy.model}, starting adapter {p.policy.adapter or 'none'}.",
        f"Data: {p.data.source}; prompt template {p.prompt.template!r}"
        f"{' sent through the tokenizer chat template' if p.prompt.chat_template else ''}; the reward scores "
        f"{'prompt + response' if p.reward.include_prompt else 'the response alone'} (reward.include_prompt "
        f"{str(p.reward.include_prompt).lower()}).",
        f"Reward model: {any_entry['setup']['reward_definition']}.",
        f"Judges (not the reward model, scoring the responses alone): {judges}.",
        f"Evaluation: {any_entry['num_prompts']} test prompts, k = {any_entry['samples_per_prompt']} samples each, "
        f"{ev.max_new_tokens} new tokens at most; a sample is toxic at P >= {any_entry['toxic_threshold']}. Same "
        "prompts and seed for every method, so differences are paired by prompt.",
    ]
    for method, e in entries.items():
        t, settings = e["training"], e["training"].get("settings") or {}
        done = (f"{t['steps_done']} steps" if t.get("steps_done") is not None else f"n = {p.best_of_n.n} samples of the starting "
                "policy per kept response")
        early = f", stopped early at step {t['early_stop_step']}" if t.get("early_stopped") else ""
        lines.append(f"{e['label']}: {done}{early}" + (
            f" ({', '.join(f'{k} {v}' for k, v in settings.items())})" if settings else "") + ".")
    off = [m.label for m in methods_of(params) if m.name not in entries]
    if off:
        lines.append(f"Off: {', '.join(off)} (their stages' enabled setting is false).")
    lines.append("ROUGE against the references." if any_entry["references"] else
                 "No reference summaries (data.summary_column is null): ROUGE and the sft stage were skipped.")
    return [(line, None) for line in lines]


GUARD_WHY = {"rougeL_drop_exceeded": "ROUGE-L fell by more than guard.max_rougeL_drop",
             "kl_exceeded": "per-token KL to the start above guard.max_kl",
             "length_below_min": "mean length below guard.min_mean_length tokens",
             "perplexity_rise_exceeded": "perplexity rose more than guard.max_perplexity_ratio x",
             "distinct2_below_min": "distinct-2 fell below guard.min_distinct2_ratio x the start's (mode collapse)",
             "judge_disagrees": "the reward model's toxicity fell (CI below 0) but a judge's did not, or by less than "
                                "guard.min_judge_agreement of its relative fall: reward hacking"}


def guard_table(entries: dict[str, dict]) -> tuple[list, list]:
    """One row a guard, one column a method: CROSSED, ok or n/a (cannot fire here: no references, no judges, or
    best-of-N's KL)."""
    names = list(next(iter(entries.values()))["guards"])
    header = ["guard", "what it flags", *[e["label"] for e in entries.values()]]
    rows = [[name, GUARD_WHY[name], *["n/a" if e["guards"][name] == NA else "CROSSED" if e["guards"][name] else "ok"
                                      for e in entries.values()]] for name in names]
    return header, rows


def side_by_side(entries: dict[str, dict]) -> tuple[list, list]:
    """Rows: each metric for the start and every method, with each one's paired difference to the start and its
    CI; then distinct-2, KL, the guards crossed and the cost."""
    first = next(iter(entries.values()))
    conf = f"{first['confidence']:.0%}"
    named = {"toxicity": f"Toxicity ({first['setup']['toxicity_label']})",  # the scorer's own names
             "reward": f"Reward ({first['setup']['reward_label']})"}
    header = ["metric", "better", "start",
              *[c for e in entries.values() for c in (e["label"], f"{e['label']} - start [{conf} CI]")]]
    rows = []

    def add(label, better, pick):
        start = next((pick(e) for e in entries.values() if pick(e)), None)
        if start is None:  # no method has it (ROUGE without references)
            return
        row = [label, better, fmt(start["before"])]
        for e in entries.values():
            s = pick(e)
            row += [fmt(s["after"]), ci_cell(s)] if s else ["", ""]
        rows.append(row)

    for key, label, better in HEADLINE:
        if key not in ("kl", "distinct_1_per_prompt", "distinct_3_per_prompt"):  # (in the comparison files)
            add(named.get(key, label), better, lambda e, key=key: e.get(key))
        if key == "toxicity_probability":
            for name in first["judges"]:
                for metric, what in (("toxicity", "toxicity"), ("expected_max_toxicity", "expected max toxicity"),
                                     ("toxicity_probability", "toxicity probability")):
                    add(f"Judge {name}: {what}", "lower",
                        lambda e, name=name, metric=metric: e["judges"].get(name, {}).get(metric))
    d2 = first["before"]["distinct_2"]
    rows.append(["Distinct-2 (all responses; no CI)", "higher", fmt(d2),
                 *[c for e in entries.values() for c in (fmt(e["after"]["distinct_2"]),
                                                         f"{e['after']['distinct_2'] - d2:+.4f}")]])
    rows.append(["KL to the start (nats per token; best-of-N: bound per response)", "lower", "0",
                 *[c for e in entries.values() for c in (kl_cell(e), "")]])
    rows.append(["KL to the start (nats per response, every method alike; best-of-N: estimate, bound)", "lower", "0",
                 *[c for e in entries.values() for c in (response_kl_cell(e.get("kl_to_start")), "")]])
    rows.append(["Guards crossed", "none", "",
                 *[c for e in entries.values() for c in (", ".join(crossed_guards(e["guards"])) or "none", "")]])
    for key, label, spec in (("evaluation_generation", "Evaluation generation (x one sample a response)", "d"),
                             ("training_responses", "Training: responses generated", "d"),
                             ("optimizer_steps", "Training: optimizer steps", "d"),
                             ("wall_s", "Training: wall time (s)", ".0f"),
                             ("peak_memory_mb", "Training: peak memory (MB)", ".0f")):
        rows.append([label, "lower", "1" if key == "evaluation_generation" else "0",
                     *[c for e in entries.values() for c in (fmt(e["cost"][key], spec), "")]])
    return header, rows


def kl_cell(e: dict) -> str:
    """The per-token KL to the start; a sampled estimate can dip below 0 (a true KL cannot): shown as about 0, with
    the estimate. Best-of-N: its bound per response."""
    if e["kl_bound"] is not None:
        return f"<= {e['kl_bound']:.4f} nats"
    return estimate_cell(e["kl_mean"])


def estimate_cell(kl) -> str:
    """A sampled KL estimate: below 0 (a true KL cannot be) shown as about 0, with the estimate."""
    if kl is not None and kl < 0:
        return f"≈0 (estimate {kl:.4f}; sampled estimates can dip below 0)"
    return fmt(kl)


def response_kl_cell(kl) -> str:
    """compare.kl_to_start, as the table shows it: the estimate, and best-of-N's bound beside it."""
    if kl is None:
        return ""
    return estimate_cell(kl["nats"]) + (f" (<= {kl['bound']:.4f})" if kl["bound"] is not None else "")


def qualitative(before: list[dict], after: list[dict]) -> list[dict]:
    """Every paired sample, the largest reward gain first."""
    rows = [{"index": int(b["index"]), "sample": int(b["sample"]),  # a prompt's k samples are k rows
             "prompt": b["prompt"], "response_before": b["response"], "response_after": a["response"],
             "reward_before": float(b["reward"]), "reward_after": float(a["reward"]),
             "reward_diff": float(a["reward"]) - float(b["reward"])} for b, a in zip(before, after)]
    return sorted(rows, key=lambda r: r["reward_diff"], reverse=True)


def histogram_rows(series: dict[str, np.ndarray], columns: list[str]) -> list[dict]:
    """Samples per toxicity bin for each series (an empty cell for a column with no series: a method that is off)."""
    edges = np.linspace(0, 1, HIST_BINS + 1)
    counts = {name: np.histogram(values, edges)[0] for name, values in series.items()}
    return [{"toxicity": round(float(edges[i] + edges[i + 1]) / 2, 3),
             **{c: int(counts[c][i]) if c in counts else "" for c in columns}} for i in range(HIST_BINS)]


def changed(row: dict) -> bool:
    """A reward difference the tables show as other than +0.000."""
    return f"{abs(row['reward_diff']):.3f}" != "0.000"


def qualitative_sections(label: str, qual: list[dict], n_rows: int) -> list:
    """The largest reward gains and losses of `label` against the start, as tables; a table whose rows would all
    read +0.000 is a sentence instead."""
    gains = [r for r in qual if changed(r) and r["reward_diff"] > 0][:n_rows]
    losses = [r for r in qual[::-1] if changed(r) and r["reward_diff"] < 0][:n_rows]
    every = ("p", f"All {label} samples, sorted by reward diff: qualitative.csv.")
    if not gains and not losses:
        return [(f"Reward per sample ({label} vs start)", [
            ("p", f"No prompt changed: every {label} sample's reward is the start's to 3 decimals."), every])]
    return [(f"Largest reward gains ({label} vs start, sorted by reward diff)", [
                ("table", QUAL_COLUMNS, qual_rows(gains)) if gains else ("p", f"No {label} sample's reward rose.")]),
            ("Largest reward losses", [
                ("table", QUAL_COLUMNS, qual_rows(losses)) if losses else ("p", f"No {label} sample's reward fell."),
                every])]


def report(entries: dict[str, dict], focus: str, qual: list[dict], params) -> tuple[str, list]:
    """(title, sections) of the whole report: the answer as its first line, a smoke-sized run said at once, one
    line per method; then what ran, the guards, the side-by-side table, the figures and the qualitative tables of
    `focus` (the method the answer names, or the first that ran)."""
    names = ", ".join(e["label"] for e in entries.values())
    tox = next(iter(entries.values()))["setup"]["toxicity_label"]
    note = smoke_note(entries)
    return answer(entries), [
        *([(None, [("p", f"**{note}**")])] if note else []),
        ("Each method against the start", [("list", method_lines(entries))]),
        ("What ran", [("list", what_ran(entries, params))]),
        ("Guards against reward hacking", [
            ("p", "CROSSED flags a warning sign of reward hacking or drift; n/a: the guard cannot fire here (no "
                  "references, no judges, a judge too weak to see the fall, or best-of-N's KL, which no single policy "
                  "has)."),
            ("table", *guard_table(entries))]),
        (f"Start and {names} side by side", [
            ("p", "Means over the paired test prompts; each difference to the start has a bootstrap CI over prompts "
                  "(each prompt's k samples resampled together). 'better' names the good direction. Toxicity is "
                  f"{tox}. Cost: what training generated and ran (best-of-N: none, but n samples at evaluation)."),
            ("table", *side_by_side(entries))]),
        ("Toxicity against KL to the start", [
            ("p", "One point a method: its toxicity after against how far it moved from the starting policy, in nats "
                  "per response, measured alike for every method (the mean log-ratio to the start of its samples; "
                  "best-of-N: log n + (n-1) E[log F(r)] among its policy's own samples, with a line to its analytic "
                  "bound log n - (n-1)/n). Lower and further left is better; best-of-N is the bar at its KL."),
            ("figure", "frontier.png", "toxicity against KL to the start")]),
        ("Maximum toxicity per prompt", [
            ("p", "Each point is a prompt: its worst (most toxic) of k samples at the start against after. Below the "
                  "diagonal, the worst case improved."),
            ("figure", "max_toxicity_per_prompt.png", "maximum toxicity per prompt, start vs after")]),
        ("Training curves", [
            ("p", "PPO's KL is TRL's objective/kl, summed over a response's tokens (nats per response; early steps can "
                  "dip below 0, an estimate from samples); GRPO's is the k3 estimate per token. The table's two KL "
                  "rows are per token and per response, on the evaluation's samples (estimates too: about 0 when "
                  "below)."),
            ("figure", "training_curves.png", "training curves")]),
        ("Toxicity per sample", [("figure", "toxicity_hist.png", "toxicity histogram")]),
        *qualitative_sections(entries[focus]["label"], qual, params.report.qualitative_rows),
    ]
