"""Stages `baseline` and `evaluate`: one evaluation, two policies.

    python stages/evaluate.py --policy start --sft models/sft --data data/prepared \
        --metrics metrics/baseline.json --samples data/samples/baseline.csv
    python stages/evaluate.py --policy models/detoxified --sft models/sft --data data/prepared \
        --metrics metrics/detoxified.json --samples data/samples/detoxified.csv

`start` is the starting policy (FLAN-T5 plus its starting adapter); a folder is a detoxified policy.
Same test prompts, same seed, same sampling settings for both, so the report can pair them.
"""
import argparse
import logging

from detoxkit.config import check_split_sizes, load_params
from detoxkit.data import load_prepared, take
from detoxkit.evaluation import SAMPLE_COLUMNS, evaluate_policy, summarize
from detoxkit.generation import sampling_kwargs
from detoxkit.io import run_stage, write_csv, write_json
from detoxkit.models import check_policy, load_detoxified, load_policy, start_adapter_path
from detoxkit.scoring import build_scorer

log = logging.getLogger("detox.evaluate")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--policy", required=True, help="`start` or a detoxified policy folder")
    parser.add_argument("--sft", required=True, help="the sft stage's output (used when policy.adapter is sft)")
    parser.add_argument("--data", required=True)
    parser.add_argument("--metrics", required=True)
    parser.add_argument("--samples", required=True)
    args = parser.parse_args()

    params = load_params()
    ev = params.evaluation
    data = load_prepared(args.data)
    check_split_sizes(params, len(data["train"]), len(data["test"]), args.data)
    rows = take(data["test"], ev.num_samples, "evaluation.num_samples")
    adapter = start_adapter_path(params.policy, args.sft)
    scorer = build_scorer(params.reward, params.compute)  # checks the labels before the policy loads
    check_policy(params)  # before the policy's weights load
    if args.policy == "start":
        model, tokenizer, device = load_policy(params.policy, params.compute, adapter)
    else:
        model, tokenizer, device = load_detoxified(args.policy, params.compute, params.policy.allow_pickle)
    log.info("evaluating %s on %d test prompts, %d samples each", args.policy, len(rows), ev.samples_per_prompt)

    records = evaluate_policy(model, tokenizer, scorer, rows, ev, params.seed, device,
                              params.compute.compile_generation, **sampling_kwargs(params.generation))
    metrics = summarize(records, ev.toxic_threshold)
    write_csv(args.samples, records, SAMPLE_COLUMNS)
    write_json(args.metrics, metrics)
    log.info("toxicity %.4f ± %.4f (expected max %.4f, probability %.3f), reward %.3f, ROUGE-L %.3f over %d "
             "samples", metrics["toxicity_mean"], metrics["toxicity_std"], metrics["expected_max_toxicity"],
             metrics["toxicity_probability"], metrics["reward_mean"], metrics["rougeL"], metrics["num_samples"])


if __name__ == "__main__":
    run_stage(main)
