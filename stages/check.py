"""Stage `check`: every check that can stop a run before heavy work, rerun whenever what it checks changes.

    python stages/check.py --data data/prepared --models metrics/models --out metrics/checks.json

It reads the policy's config (a language model whose window fits the longest prompt plus the most new tokens any
stage asks for, with the layers every LoRA setting names), a starting adapter folder (its config, and weights that
load without running code), the reward model and every judge (a classifier's config and labels by name, no
weights; a Python scorer called once on probe texts; no judge that is the reward itself, by id, path or lineage
manifest), the prepared split sizes against every size setting (sft.batch_size, reference.num_prompts,
evaluation.num_samples, sft.eval_samples, each online method's batch_size) and that no test prompt is a train
prompt. dvc.yaml declares those settings and inputs (the methods entries apart: below), and every stage that trains
or samples depends on this stage's output, so a change to any of them runs the checks first. The output holds the
split sizes only, so it changes only when the data do.

The methods entries are checked here too (each one's LoRA layers, its batch size against the train split), so a
fresh run stops before any heavy work; but `check` does not depend on them (dvc.yaml lists no methods key here), so
a change to one entry reruns that entry's stages and not this one: its train@NAME stage repeats its own checks
before its model loads, which is where a later edit of an entry is caught.
"""
import argparse
import logging

from detoxkit.config import check_split_sizes, load_params
from detoxkit.data import check_no_leak, load_prepared
from detoxkit.io import run_stage, write_json
from detoxkit.models import check_lora_targets, check_policy, check_start_adapter, check_weights, resolve_device
from detoxkit.scoring import check_scorers

log = logging.getLogger("detox.check")
CHECKED = ["policy: a language model; prompt + new tokens fit its window; LoRA targets exist",
           "starting adapter: a PEFT folder whose weights load without running code",
           "reward and judges: configs, labels by name, probes; no judge is the reward",
           "local model folders: their safetensors weights are whole",
           "split sizes: every batch and sample count fits the prepared data",
           "splits: no test prompt is also a train prompt"]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", required=True, help="the prepare stage's DatasetDict")
    parser.add_argument("--models", required=True, help="the lineage stage's manifests")
    parser.add_argument("--out", required=True, help="a small JSON file the training and sampling stages depend on")
    args = parser.parse_args()

    params = load_params()
    resolve_device(params.compute)  # compute.device cuda on a machine with no GPU: here, not in the first training
    config = check_policy(params)
    loras = [("sft.lora", params.sft.lora)] if params.policy.adapter == "sft" else []
    loras += [(f"methods.{name}.lora", m.lora) for name, m in params.methods.items() if m.enabled]
    for key, lora in loras:
        check_lora_targets(config, lora, key)
    check_start_adapter(params.policy)
    check_scorers(params.reward, params.evaluation.judges, args.models)
    for key, model in (("policy.model", params.policy.model), ("reward.model", params.reward.model),
                       *((f"evaluation.judges[{i}].model", j.model) for i, j in enumerate(params.evaluation.judges))):
        check_weights(key, model)  # a local folder's weights cut short: named now, not at the first load
    data = load_prepared(args.data)
    n_train, n_test = len(data["train"]), len(data["test"])
    check_split_sizes(params, n_train, n_test, args.data)
    check_no_leak(data, args.data)
    write_json(args.out, {"train_prompts": n_train, "test_prompts": n_test, "checked": CHECKED})
    log.info("all checks passed: %d train and %d test prompts", n_train, n_test)


if __name__ == "__main__":
    run_stage(main)
