"""Stage `report`: every method against the start, one comparison file each, and the Markdown/HTML/CSV report.

    python stages/report.py --start data/samples/baseline.csv \
        --method ppo data/samples/ppo.csv metrics/ppo_train --method dpo data/samples/dpo.csv metrics/dpo_train \
        --method grpo data/samples/grpo.csv metrics/grpo_train --method best_of_n data/samples/best_of_n.csv \
        --compare metrics/compare --headline metrics/headline --out reports

Each `--method NAME SAMPLES [TRAINING_LIVE_FOLDER]` becomes metrics/compare/NAME.json, of one schema
(detoxkit.compare.method_entry: metrics with paired CIs, judges, guards, outcome, KL, cost), and, with --headline,
metrics/headline/NAME.json and start.json: a few flat numbers each, for `dvc metrics show`. The report's first line
is the answer (which method lowered toxicity most with no guard crossed), then one line per method coloured by its
outcome, what ran, the guards and the side-by-side table. Markdown and HTML come from one list of sections
(detoxkit.sections.report); nothing here is written per method.
"""
import argparse
import base64
import logging
from pathlib import Path

import numpy as np

from detoxkit import render, sections
from detoxkit.compare import best_method, headline, headline_start, method_entry, read_method
from detoxkit.config import load_params
from detoxkit.errors import PipelineError
from detoxkit.evaluation import per_prompt
from detoxkit.io import atomic_dir, read_csv, run_stage, write_csv, write_json, write_text
from detoxkit.methods import LABELS

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
    parser.add_argument("--headline", help="folder for the flat headline files (start.json and one per method)")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()

    params = load_params()
    before = read_csv(args.start)
    entries, samples, histories = {}, {}, {}
    for method, (csv, live) in parse_methods(args.method).items():
        rows, train, timing = read_method(method, csv, live)
        entry = method_entry(method, before, rows, params, train, timing)
        write_json(Path(args.compare) / f"{method}.json", entry)
        if args.headline:
            write_json(Path(args.headline) / f"{method}.json", headline(entry))
        if entry["enabled"]:
            entries[method], samples[method] = entry, rows
            if live:
                histories[LABELS[method]] = render.read_live_history(live)
    if not entries:
        raise PipelineError("no method ran (every --method's samples are empty); enable one and rerun `dvc repro`")
    if args.headline:
        write_json(Path(args.headline) / "start.json", headline_start(next(iter(entries.values()))))
    with atomic_dir(args.out) as tmp:
        write_reports(tmp, entries, before, samples, histories, params)
    log.info("%s", sections.answer(entries))


def write_reports(out: Path, entries: dict, before: list[dict], samples: dict, histories: dict, params):
    """report.md (+ its PNG figures), report.html, qualitative.csv, toxicity_hist.csv and
    per_prompt_max_toxicity.csv, from one list of sections."""
    threshold = params.evaluation.toxic_threshold
    focus = best_method(entries, trained_only=True) or next(iter(samples))  # the qualitative tables' method
    qual = sections.qualitative(before, samples[focus])
    worst_start = per_prompt(before, threshold)["max_toxicity"]
    worst = {LABELS[m]: per_prompt(rows, threshold)["max_toxicity"] for m, rows in samples.items()}
    tox = {"start": np.array([float(r["toxicity"]) for r in before]),
           **{m: np.array([float(r["toxicity"]) for r in rows]) for m, rows in samples.items()}}
    label = next(iter(entries.values()))["setup"]["toxicity_label"]
    images = {"max_toxicity_per_prompt.png": render.max_toxicity_figure(worst_start, worst),
              "training_curves.png": render.training_figure(histories),
              "toxicity_hist.png": render.histogram_figure({k if k == "start" else LABELS[k]: v
                                                            for k, v in tox.items()}, label)}
    title, blocks = sections.report(entries, focus, qual, params)
    for name, b64 in images.items():
        (out / name).write_bytes(base64.b64decode(b64))
    write_text(out / "report.md", render.to_markdown(title, blocks))
    write_text(out / "report.html", render.to_html(title, blocks, images))
    write_csv(out / "qualitative.csv", qual, render.QUAL_COLUMNS)
    columns = ["start", *LABELS]
    write_csv(out / "toxicity_hist.csv", sections.histogram_rows(tox, columns), ["toxicity", *columns])
    per = [{"prompt": i, "start": float(worst_start[i]),
            **{m: float(worst[LABELS[m]][i]) if m in samples else "" for m in LABELS}} for i in range(len(worst_start))]
    write_csv(out / "per_prompt_max_toxicity.csv", per, ["prompt", *columns])


if __name__ == "__main__":
    run_stage(main)
