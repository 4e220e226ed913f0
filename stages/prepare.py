"""Stage `prepare`: read dialogues, keep the lab's length window, wrap them in the prompt, tokenize, split.

    python stages/prepare.py --out data/prepared
"""
import argparse
import logging

from detoxkit.config import check_split_sizes, load_params
from detoxkit.data import load_source, prepare
from detoxkit.io import atomic_dir, run_stage
from detoxkit.models import check_policy, load_tokenizer
from detoxkit.scoring import check_scorers

log = logging.getLogger("detox.prepare")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True, help="folder for the tokenized train/test DatasetDict")
    parser.add_argument("--models", help="the lineage stage's manifests: a judge with the reward model's content "
                        "or Hub commit is refused (a check only: what prepare writes does not depend on them)")
    args = parser.parse_args()

    params = load_params()
    check_policy(params)  # a wrong policy.model fails here, not later
    # so do a wrong reward model or judge (a classifier's config and labels, no weights; a Python scorer
    # called once on probe texts) and a judge that is the reward itself, before the sft stage trains anything
    check_scorers(params.reward, params.evaluation.judges, args.models)
    tokenizer = load_tokenizer("policy.model", params.policy.model, params.policy.revision)
    raw = load_source(params.data)
    split = prepare(raw, params.data, params.prompt, tokenizer, params.seed)
    # The sizes later stages need (ppo.batch_size, evaluation.num_samples...): fail now, not hours later.
    check_split_sizes(params, len(split["train"]), len(split["test"]), f"data.source {params.data.source}")
    with atomic_dir(args.out) as tmp:
        split.save_to_disk(str(tmp))
    log.info("wrote %s: %d train, %d test prompts", args.out, len(split["train"]), len(split["test"]))


if __name__ == "__main__":
    run_stage(main)
