"""Stage `prepare`: read dialogues, keep the lab's length window, wrap them in the prompt, tokenize, split.

    python stages/prepare.py --out data/prepared

It reads data.*, prompt.* and the policy's tokenizer, and nothing else; the checks of the other settings
against the prepared data run in the `check` stage.
"""
import argparse
import logging

from detoxkit.config import load_params
from detoxkit.data import load_source, prepare
from detoxkit.io import atomic_dir, run_stage
from detoxkit.models import check_policy_config, load_tokenizer

log = logging.getLogger("detox.prepare")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True, help="folder for the tokenized train/test DatasetDict")
    args = parser.parse_args()

    params = load_params()
    check_policy_config(params.policy)  # a wrong policy.model (a classifier, say) fails here, not later
    tokenizer = load_tokenizer("policy.model", params.policy.model, params.policy.revision)
    raw = load_source(params.data)
    split = prepare(raw, params.data, params.prompt, tokenizer, params.seed)
    with atomic_dir(args.out) as tmp:
        split.save_to_disk(str(tmp))
    log.info("wrote %s: %d train, %d test prompts", args.out, len(split["train"]), len(split["test"]))


if __name__ == "__main__":
    run_stage(main)
