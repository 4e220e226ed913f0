"""Stage `report`: every method against the start, one comparison file each, and the Markdown/HTML/CSV report.

    python stages/report.py --start data/samples/baseline.csv --samples data/samples --train metrics/train \
        --compare metrics/compare --headline metrics/headline --out reports

The methods are params.yaml's: each methods entry NAME (its samples SAMPLES/NAME.csv, its training stage's DVCLive
folder TRAIN/NAME), then best-of-N (SAMPLES/best_of_n.csv). Each becomes metrics/compare/NAME.json, of one schema
(detoxkit.compare.method_entry: metrics with paired CIs, judges, guards, outcome, KL, cost), and, with --headline,
metrics/headline/NAME.json and start.json: a few flat numbers each, for `dvc metrics show`. Both folders are
written whole, so an entry removed from params.yaml leaves no stale file. The report's first line is the answer
(which method lowered toxicity most with no guard crossed), then one line per method coloured by its outcome, what
ran, the guards and the side-by-side table. Markdown and HTML come from one list of sections
(detoxkit.sections.report); nothing here is written per method.
"""
import argparse
import base64
import logging
from pathlib import Path

import numpy as np

from detoxkit import render, sections
from detoxkit.compare import answer_method, best_method, headline, headline_start, method_entry, read_method
from detoxkit.config import load_params
from detoxkit.errors import PipelineError
from detoxkit.summary import per_prompt
from detoxkit.io import atomic_dir, read_csv, run_stage, write_csv, write_json, write_text
from detoxkit.methods import BEST_OF_N, methods_of

log = logging.getLogger("detox.report")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--start", required=True, help="the baseline stage's samples (the starting policy)")
    parser.add_argument("--samples", required=True, help="the evaluations' samples, NAME.csv a method")
    parser.add_argument("--train", required=True, help="the training stages' DVCLive folders, NAME a methods entry")
    parser.add_argument("--compare", required=True, help="folder for one comparison file per method")
    parser.add_argument("--headline", help="folder for the flat headline files (start.json and one per method)")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()

    params = load_params()
    before = read_csv(args.start)
    entries, samples, histories, files = {}, {}, {}, {}
    every = methods_of(params)
    bon = next(m for m in every if m.name == BEST_OF_N)  # each trained method is compared with it too
    bon_rows = read_method(bon.name, Path(args.samples) / f"{bon.name}.csv", None)[0] if bon.enabled else None
    for method in every:
        trained = method if method.trains_weights else method.on  # best-of-N on a policy: that policy's training
        live = Path(args.train) / trained.name if trained else None
        rows, train, timing = (read_method(method.name, Path(args.samples) / f"{method.name}.csv", live)
                               if method.enabled else ([], {}, {}))  # off: its files are placeholders, unread
        entry = method_entry(method, before, rows, params, train, timing, bon_rows or None,
                             files.get(method.on.name) if method.on else None)
        files[method.name] = entry
        if entry["enabled"]:
            entries[method.name], samples[method.name] = entry, rows
            if method.trains_weights:  # (best-of-N on a trained policy: that policy's curves are its own)
                histories[method.label] = render.read_live_history(live)
    if not entries:
        raise PipelineError("no method ran (every method's samples are empty); enable one and rerun `dvc repro`")
    with atomic_dir(args.compare) as tmp:
        for name, entry in files.items():
            write_json(tmp / f"{name}.json", entry)
    if args.headline:
        with atomic_dir(args.headline) as tmp:
            for name, entry in files.items():
                write_json(tmp / f"{name}.json", headline(entry))
            write_json(tmp / "start.json", headline_start(next(iter(entries.values()))))
    with atomic_dir(args.out) as tmp:
        write_reports(tmp, entries, before, samples, histories, params)
    log.info("%s", sections.answer(entries))


def write_reports(out: Path, entries: dict, before: list[dict], samples: dict, histories: dict, params):
    """report.md (+ its PNG figures), report.html, qualitative.csv, toxicity_hist.csv and
    per_prompt_max_toxicity.csv, from one list of sections."""
    threshold = params.evaluation.toxic_threshold
    answer = answer_method(entries)  # the qualitative tables' method: the answer if it has weights, else the best
    focus = answer if answer and entries[answer]["trains_weights"] else best_method(entries, trained_only=True)
    focus = focus or next(iter(samples))
    qual = sections.qualitative(before, samples[focus])
    worst_start = per_prompt(before, threshold)["max_toxicity"]
    labels = {m: e["label"] for m, e in entries.items()}
    worst = {labels[m]: per_prompt(rows, threshold)["max_toxicity"] for m, rows in samples.items()}
    tox = {"start": np.array([float(r["toxicity"]) for r in before]),
           **{m: np.array([float(r["toxicity"]) for r in rows]) for m, rows in samples.items()}}
    label = next(iter(entries.values()))["setup"]["toxicity_label"]
    frontier = render.frontier_points(entries)
    images = {"max_toxicity_per_prompt.png": render.max_toxicity_figure(worst_start, worst),
              "frontier.png": render.frontier_figure(frontier, label),
              "training_curves.png": render.training_figure(histories),
              "toxicity_hist.png": render.histogram_figure({k if k == "start" else labels[k]: v
                                                            for k, v in tox.items()}, label)}
    title, blocks = sections.report(entries, focus, qual, params)
    for name, b64 in images.items():
        (out / name).write_bytes(base64.b64decode(b64))
    write_text(out / "report.md", render.to_markdown(title, blocks))
    write_text(out / "report.html", render.to_html(title, blocks, images))
    write_csv(out / "qualitative.csv", qual, render.QUAL_COLUMNS)
    columns = ["start", *(m.name for m in methods_of(params))]  # a method that is off: an empty column
    write_csv(out / "toxicity_hist.csv", sections.histogram_rows(tox, columns), ["toxicity", *columns])
    per = [{"prompt": i, "start": float(worst_start[i]),
            **{m: float(worst[labels[m]][i]) if m in samples else "" for m in columns[1:]}}
           for i in range(len(worst_start))]
    write_csv(out / "per_prompt_max_toxicity.csv", per, ["prompt", *columns])
    series = {"start": before, **{labels[m]: rows for m, rows in samples.items()}}
    every = ["start", *(m.label for m in methods_of(params))]  # a method that is off keeps its place (its colour)
    render.plot_files(out / "plots", every, series, {"start": worst_start, **worst}, histories, frontier)


if __name__ == "__main__":
    run_stage(main)
