"""Stage `report`: every method against the start, one comparison file each, and the Markdown/HTML/CSV report.

    python stages/report.py --start data/samples/baseline.csv \
        --method ppo data/samples/ppo.csv metrics/ppo_train --method dpo data/samples/dpo.csv metrics/dpo_train \
        --method grpo data/samples/grpo.csv metrics/grpo_train --method best_of_n data/samples/best_of_n.csv \
        --compare metrics/compare --out reports

Each `--method NAME SAMPLES [TRAINING_LIVE_FOLDER]` becomes metrics/compare/NAME.json, of one schema
(detoxkit.compare.method_entry: metrics with paired CIs, judges, guards, KL, cost), so `dvc metrics show` lists
every method alike. The report leads with the answer (which method lowered toxicity most with no guard crossed,
then one line per method), then the guards and the side-by-side table. Markdown and HTML come from one list of
sections (detoxkit.sections); nothing here is written per method.
"""
import argparse
import base64
import logging
from pathlib import Path

import numpy as np

from detoxkit import render
from detoxkit.compare import LABELS, best_method, method_entry, read_method
from detoxkit.config import PipelineError, load_params
from detoxkit.evaluation import per_prompt
from detoxkit.io import atomic_dir, read_csv, run_stage, write_csv, write_json, write_text
from detoxkit.sections import answer, guard_table, histogram_rows, qualitative, side_by_side, what_ran

log = logging.getLogger("detox.report")


def parse_methods(items: list[list[str]]) -> dict[str, tuple[str, str]]:
    methods = {}
    for item in items:
        if item[0] not in LABELS or len(item) not in (2, 3):
            raise PipelineError(f"--method {' '.join(item)}: give NAME SAMPLES [LIVE], NAME one of {list(LABELS)}")
        methods[item[0]] = (item[1], item[2] if len(item) == 3 else None)
    return methods


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--start", required=True, help="the baseline stage's samples (the starting policy)")
    parser.add_argument("--method", nargs="+", action="append", required=True, metavar="NAME SAMPLES [LIVE]",
                        help="a method's samples and, for a trained one, its training stage's DVCLive folder")
    parser.add_argument("--compare", required=True, help="folder for one comparison file per method")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()

    params = load_params()
    before = read_csv(args.start)
    entries, samples, histories = {}, {}, {}
    for method, (csv, live) in parse_methods(args.method).items():
        rows, train, timing = read_method(method, csv, live)
        entry = method_entry(method, before, rows, params, train, timing)
        write_json(Path(args.compare) / f"{method}.json", entry)
        if entry["enabled"]:
            entries[method], samples[method] = entry, rows
            if live:
                histories[LABELS[method]] = render.read_live_history(live)
    if not entries:
        raise PipelineError("no method ran (every --method's samples are empty); enable one and rerun `dvc repro`")
    with atomic_dir(args.out) as tmp:
        write_reports(tmp, entries, before, samples, histories, params)
    best = best_method(entries)
    log.info("%s", "; ".join(f"{LABELS[m]} toxicity {e['toxicity']['before']:.4f} -> {e['toxicity']['after']:.4f}"
                             for m, e in entries.items()) + f"; answer: {LABELS[best] if best else 'none'}")


def write_reports(out: Path, entries: dict, before: list[dict], samples: dict, histories: dict, params):
    """report.md (+ its PNG figures), report.html, qualitative.csv, toxicity_hist.csv and
    per_prompt_max_toxicity.csv, from one list of sections."""
    threshold, n_rows = params.evaluation.toxic_threshold, params.report.qualitative_rows
    focus = best_method(entries, trained_only=True) or next(iter(samples))  # the qualitative tables' method
    qual = qualitative(before, samples[focus])
    worst_start = per_prompt(before, threshold)["max_toxicity"]
    worst = {LABELS[m]: per_prompt(rows, threshold)["max_toxicity"] for m, rows in samples.items()}
    tox = {"start": np.array([float(r["toxicity"]) for r in before]),
           **{m: np.array([float(r["toxicity"]) for r in rows]) for m, rows in samples.items()}}
    images = {"max_toxicity_per_prompt.png": render.max_toxicity_figure(worst_start, worst),
              "training_curves.png": render.training_figure(histories),
              "toxicity_hist.png": render.histogram_figure({k if k == "start" else LABELS[k]: v
                                                            for k, v in tox.items()})}
    names = ", ".join(LABELS[m] for m in entries)
    sections = [
        ("What ran", [("list", what_ran(entries, params))]),
        ("Answer", answer(entries, params.report.min_pairs)),
        ("Guards against reward hacking", [
            ("p", "CROSSED flags a warning sign of reward hacking or drift; n/a: the guard cannot fire here (no "
                  "references, no judges, or best-of-N's KL, which no single policy has)."),
            ("table", *guard_table(entries))]),
        (f"Start and {names} side by side", [
            ("p", "Means over the paired test prompts; each difference to the start has a bootstrap CI over prompts "
                  "(each prompt's k samples resampled together). 'better' names the good direction. Cost: what "
                  "training generated and ran (best-of-N: none, but n samples at evaluation)."),
            ("table", *side_by_side(entries))]),
        ("Maximum toxicity per prompt", [
            ("p", "Each point is a prompt: its worst (most toxic) of k samples at the start against after. Below the "
                  "diagonal, the worst case improved."),
            ("figure", "max_toxicity_per_prompt.png", "maximum toxicity per prompt, start vs after")]),
        ("Training curves", [
            ("p", "PPO's KL is TRL's objective/kl, summed over a response's tokens (nats per response; early steps can "
                  "dip below 0, an estimate from samples); GRPO's is the k3 estimate per token. The table's KL is per "
                  "token on the evaluation's samples."),
            ("figure", "training_curves.png", "training curves")]),
        ("Toxicity per sample", [("figure", "toxicity_hist.png", "toxicity histogram")]),
        (f"Largest reward gains ({LABELS[focus]} vs start, sorted by reward diff)", [
            ("table", render.QUAL_COLUMNS, render.qual_rows(qual[:n_rows]))]),
        ("Largest reward losses", [("table", render.QUAL_COLUMNS, render.qual_rows(qual[::-1][:n_rows])),
                                   ("p", f"All {LABELS[focus]} samples, sorted by reward diff: qualitative.csv.")]),
    ]
    for name, b64 in images.items():
        (out / name).write_bytes(base64.b64decode(b64))
    write_text(out / "report.md", render.to_markdown("Detoxification report", sections))
    write_text(out / "report.html", render.to_html("Detoxification report", sections, images))
    write_csv(out / "qualitative.csv", qual, render.QUAL_COLUMNS)
    columns = ["start", *LABELS]
    write_csv(out / "toxicity_hist.csv", histogram_rows(tox, columns), ["toxicity", *columns])
    per = [{"prompt": i, "start": float(worst_start[i]),
            **{m: float(worst[LABELS[m]][i]) if m in samples else "" for m in LABELS}} for i in range(len(worst_start))]
    write_csv(out / "per_prompt_max_toxicity.csv", per, ["prompt", *columns])


if __name__ == "__main__":
    run_stage(main)
