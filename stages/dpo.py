"""Stage `train@NAME` of a DPO methods entry: Direct Preference Optimization of a fresh LoRA adapter on the starting
policy.

    python stages/dpo.py --method dpo --data data/prepared --reference data/reference --sft models/sft \
        --out models/trained/dpo --live metrics/train/dpo --checkpoints checkpoints/dpo

TRL 0.11.4's DPOTrainer (detoxkit.dpo_engine) on pairs made from the reference stage's samples with the entry's
min_margin (detoxkit.preferences.make_pairs). The reference is the starting policy (its start adapter merged, as
for PPO): the same model with the DPO adapter disabled. Its adapter folder has PPO's layout (adapter,
start_adapter/, policy.json; no value head), so `load_detoxified` and `publish` serve it. The loss and
reward-margin curves go to DVCLive (--live); its train.json (detoxkit.training.TrainRecord) holds the cost: pairs,
the reference samples (rollouts), optimizer steps; timing.json the wall time (the reference samples' included).
Both outputs appear whole when training ends, or not at all. An entry that is off writes placeholders. With
compute.processes > 1 (or under torchrun) the Trainer runs data-parallel: each process trains on its share of
the pairs (batch_size each), gradients are averaged, and one process writes. --data and --checkpoints are the
template's (every training script takes them); DPO reads neither.
"""
import logging
import shutil
import time
from pathlib import Path

from detoxkit.io import run_stage, write_json
from detoxkit.parallel import is_main, world
from detoxkit.training import TrainRecord, begin, log_row, outputs, settings_of

log = logging.getLogger("detox.dpo")


def main():
    args, params, method, off = begin("dpo")  # the --method entry; placeholders when it is off
    if off:
        return
    dpo, key = method.settings, f"methods.{method.name}"

    import torch

    from detoxkit.dpo_engine import DPOEngine
    from detoxkit.preferences import check_pairs, make_pairs, read_reference
    from detoxkit.models import (attach_lora, check_lora_targets, check_policy_config, load_policy, peak_memory,
                                 save_detoxified, start_adapter_path, trainable_parameters)

    records, summary = read_reference(Path(args.reference))
    pairs, counts = make_pairs(records, dpo.min_margin)
    log.info("%d of %d prompts gave a pair (reward gap >= %s.min_margin %g; mean gap %.3f over all prompts)",
             counts["pairs"], counts["prompts"], key, dpo.min_margin, counts["margin_mean_all"])
    check_pairs(pairs, dpo, key, f"{args.reference} ({counts['prompts']} train prompts)")  # before any model loads
    check_lora_targets(check_policy_config(params.policy), dpo.lora, f"{key}.lora")
    adapter = start_adapter_path(params.policy, args.sft)
    torch.manual_seed(params.seed)  # before the adapter is created
    model, tokenizer, device = load_policy(params.policy, params.compute, adapter)
    model = attach_lora(model, dpo.lora, f"{key}.lora")
    trainable, total = trainable_parameters(model)
    log.info("DPO on %d pairs; trainable parameters (LoRA): %d of %d (%.2f%%)", len(pairs), trainable, total,
             100 * trainable / total)
    scratch = Path(args.out).with_name(f".{method.name}-trainer")  # Trainer scratch space (nothing is saved there)
    if is_main():  # under torchrun each process trains on its share of the pairs; one writes
        shutil.rmtree(scratch, ignore_errors=True)  # a killed run's
    with outputs(args.out, args.live) as out:
        def on_log(step: int, curves: dict):
            if out:
                log_row(out.live, {"step": step, **curves})

        start = time.perf_counter()
        result = DPOEngine(model, tokenizer, dpo, params.seed, device, scratch, n=summary["n"]).train(pairs, on_log)
        wall = time.perf_counter() - start
        if not out:
            return
        out.live.end()
        shutil.rmtree(scratch, ignore_errors=True)
        save_detoxified(out.out_dir, model, None, params.policy, adapter)
        TrainRecord(method.name, "dpo", steps_done=result["steps_done"], train_loss=result["train_loss"],
                    prompts_exact=result["prompts_exact"], pairs=len(pairs), prompts=counts["prompts"],
                    trainable_parameters=trainable, total_parameters=total, processes=world()[1],
                    rollouts=summary["generated_samples"],  # the reference samples: DPO's training responses
                    optimizer_steps=result["steps_done"], settings=settings_of(dpo)).write(out.live_dir / "train.json")
        # the reference sampling counts as DPO's training cost: it is DPO's rollouts
        write_json(out.live_dir / "timing.json", {"wall_s": wall + summary["wall_s"], "train_wall_s": wall,
                                                  "reference_wall_s": summary["wall_s"], **peak_memory(device)})
    log.info("saved the %s adapter to %s after %d steps (%.1f s)", method.label, args.out, result["steps_done"], wall)


if __name__ == "__main__":
    run_stage(main, parallel=True)
