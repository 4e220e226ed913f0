"""A judge no one tuned for, on a finished run's samples: does each method's fall, and its match with best-of-N, hold?

    python bench/rejudge.py --repo runs/real --judge python:my_scorers.py:toxicity   # every method of the run
    python bench/rejudge.py --repo runs/real --judge ... --methods dpo best_of_n

Reads the run's samples files (data/samples/*.csv: the same prompts, k samples each, for every method), scores every
response alone with the judge (a Python scorer, `python:MODULE:FUNCTION` or `python:path/to/file.py:FUNCTION`, as
params.yaml's judges are written), and prints for each method the paired difference in the judge's mean P(toxic)
against the start and, for a trained method, against best-of-N, with the run's own bootstrap settings
(detoxkit.compare.paired_entry over prompts). No model loads and nothing in the run changes: a judge added after the
fact costs seconds, where adding it to evaluation.judges reruns every evaluation.
"""
import argparse
import sys
from pathlib import Path

import numpy as np

from detoxkit.compare import check_paired, paired_entry  # pip install -e . (the README's commands)
from detoxkit.config import load_params
from detoxkit.errors import PipelineError
from detoxkit.io import read_csv
from detoxkit.python_scorer import PythonScorer
from detoxkit.summary import JUDGE
from detoxkit.summary import per_prompt as summary_per_prompt


def per_prompt(rows: list[dict], scores: np.ndarray, threshold: float) -> np.ndarray:
    """The mean score of each prompt's k samples, prompts in the order of their first sample: the judge's column,
    grouped as the report groups every judge (summary.per_prompt)."""
    column = f"{JUDGE}rejudge"
    return summary_per_prompt([{**r, column: float(v)} for r, v in zip(rows, scores)], threshold)[column]


def shown(e: dict) -> str:
    return f"{e['before']:.3f} -> {e['after']:.3f}, {e['diff']:+.3f} [{e['diff_ci_low']:+.3f}, {e['diff_ci_high']:+.3f}]"


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repo", type=Path, required=True, help="a finished run's repository")
    parser.add_argument("--judge", required=True, help="python:MODULE:FUNCTION, P(toxic) for a list of texts")
    parser.add_argument("--methods", nargs="*", help="samples files to judge (default: every non-empty one)")
    args = parser.parse_args()
    params = load_params(args.repo / "params.yaml")
    judge = PythonScorer("--judge", args.judge, params.reward.batch_size)
    files = {p.stem: p for p in sorted((args.repo / "data/samples").glob("*.csv"))}
    start = read_csv(files.pop("baseline"))
    names = args.methods or [m for m, p in files.items() if read_csv(p)]
    rows = {m: read_csv(files[m]) for m in names}
    scores = {m: judge.probabilities([r["response"] for r in rows[m]]) for m in names}
    threshold = params.evaluation.toxic_threshold
    before = per_prompt(start, judge.probabilities([r["response"] for r in start]), threshold)
    bon = per_prompt(rows["best_of_n"], scores["best_of_n"], threshold) if "best_of_n" in rows else None
    print(f"judge {judge.name} on {len(before)} prompts x {len(start) // len(before)} samples of {args.repo}")
    for m in names:
        check_paired(start, rows[m], m)
        after = per_prompt(rows[m], scores[m], threshold)
        line = f"{m}: vs start {shown(paired_entry('toxicity', before, after, params.report))}"
        if bon is not None and m != "best_of_n" and not m.endswith("+bon"):
            line += f"; vs best-of-N {shown(paired_entry('toxicity', bon, after, params.report))}"
        print(line)


if __name__ == "__main__":
    try:
        main()
    except PipelineError as err:  # a judge that cannot load or answers wrongly: one line, no traceback
        sys.exit(f"rejudge: {err}")
