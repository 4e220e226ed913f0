"""Stage `dpo`: Direct Preference Optimization of a fresh LoRA adapter on the starting policy.

    python stages/dpo.py --pairs data/dpo_pairs --pairs-metrics metrics/dpo_pairs.json --sft models/sft \
        --out models/dpo --live metrics/dpo_train

TRL 0.11.4's DPOTrainer (detoxkit.dpo_engine) on the dpo_pairs stage's pairs. The reference is the starting
policy (its start adapter merged, as for PPO): the same model with the DPO adapter disabled. `models/dpo`
has the layout of `models/ppo` (adapter, start_adapter/, policy.json; no value head: DPO has none), so
`load_detoxified` and `publish` serve it. The loss and reward-margin curves go to DVCLive (--live); its
train.json (detoxkit.training.TrainRecord) holds the cost: pairs, the pair samples (rollouts), optimizer
steps; timing.json the wall time. Both outputs appear
whole when training ends, or not at all. With `dpo.enabled: false` it writes placeholders. With
compute.processes > 1 (or under torchrun) the Trainer runs data-parallel: each process trains on its share of
the pairs (dpo.batch_size each), gradients are averaged, and one process writes.
"""
import argparse
import json
import logging
import shutil
import time
from pathlib import Path

from detoxkit.config import load_params
from detoxkit.errors import PipelineError
from detoxkit.io import read_json, run_stage, write_json
from detoxkit.parallel import is_main, world
from detoxkit.training import TrainRecord, log_row, outputs, settings_of, skip

log = logging.getLogger("detox.dpo")


def read_pairs(folder: Path) -> list[dict]:
    file = folder / "pairs.jsonl"
    if not file.is_file():
        raise PipelineError(f"{file} not found; run the dpo_pairs stage first (dvc repro dpo_pairs)")
    try:
        return [json.loads(line) for line in file.read_text(encoding="utf-8").splitlines() if line.strip()]
    except ValueError:
        raise PipelineError(f"{file} is damaged (not JSON lines); rebuild it with `dvc repro dpo_pairs`") from None


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--pairs", required=True, help="the dpo_pairs stage's folder (pairs.jsonl)")
    parser.add_argument("--pairs-metrics", required=True, help="the dpo_pairs stage's counts")
    parser.add_argument("--sft", required=True, help="the sft stage's output (used when policy.adapter is sft)")
    parser.add_argument("--out", required=True)
    parser.add_argument("--live", required=True, help="DVCLive folder for the per-step curves and train.json")
    args = parser.parse_args()

    params = load_params()
    dpo = params.dpo
    if skip("dpo", params, args.out, args.live):
        return

    import torch

    from detoxkit.dpo_engine import DPOEngine
    from detoxkit.preferences import check_pairs
    from detoxkit.models import (attach_lora, check_lora_targets, check_policy_config, load_policy, peak_memory,
                                 save_detoxified, start_adapter_path, trainable_parameters)

    counts = read_json(args.pairs_metrics)
    if counts.get("enabled") is False or not {"prompts", "generated_samples", "wall_s"} <= set(counts):
        raise PipelineError(f"{args.pairs_metrics} holds no pair counts ({json.dumps(counts)[:80]}): the dpo_pairs "
                            "stage ran with dpo.enabled false or did not finish; run it again (dvc repro dpo_pairs)")
    pairs = read_pairs(Path(args.pairs))
    check_pairs(pairs, dpo, f"{args.pairs}/pairs.jsonl")  # before any model loads
    check_lora_targets(check_policy_config(params.policy), dpo.lora, "dpo.lora")
    adapter = start_adapter_path(params.policy, args.sft)
    torch.manual_seed(params.seed)  # before the adapter is created
    model, tokenizer, device = load_policy(params.policy, params.compute, adapter)
    model = attach_lora(model, dpo.lora, "dpo.lora")
    trainable, total = trainable_parameters(model)
    log.info("DPO on %d pairs; trainable parameters (LoRA): %d of %d (%.2f%%)", len(pairs), trainable, total,
             100 * trainable / total)
    scratch = Path(args.out).with_name(".dpo-trainer")  # Trainer scratch space (nothing is saved there)
    if is_main():  # under torchrun each process trains on its share of the pairs; one writes
        shutil.rmtree(scratch, ignore_errors=True)  # a killed run's
    with outputs(args.out, args.live) as out:
        def on_log(step: int, curves: dict):
            if out:
                log_row(out.live, {"step": step, **curves})

        start = time.perf_counter()
        result = DPOEngine(model, tokenizer, dpo, params.seed, device, scratch).train(pairs, on_log)
        wall = time.perf_counter() - start
        if not out:
            return
        out.live.end()
        shutil.rmtree(scratch, ignore_errors=True)
        save_detoxified(out.out_dir, model, None, params.policy, adapter)
        TrainRecord("dpo", steps_done=result["steps_done"], train_loss=result["train_loss"],
                    prompts_exact=result["prompts_exact"], pairs=len(pairs), prompts=counts["prompts"],
                    trainable_parameters=trainable, total_parameters=total, processes=world()[1],
                    rollouts=counts["generated_samples"],  # the pairs' samples: DPO's training responses
                    optimizer_steps=result["steps_done"], settings=settings_of(dpo)).write(out.live_dir / "train.json")
        # the pairs' sampling counts as DPO's training cost: it is DPO's rollouts
        write_json(out.live_dir / "timing.json", {"wall_s": wall + counts["wall_s"], "train_wall_s": wall,
                                                  "pairs_wall_s": counts["wall_s"], **peak_memory(device)})
    log.info("saved the DPO adapter to %s after %d steps (%.1f s)", args.out, result["steps_done"], wall)


if __name__ == "__main__":
    run_stage(main, parallel=True)
