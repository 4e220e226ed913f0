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
    from detoxkit.preferences import check_pairs, make_pairs, policy_samples, read_reference
    from detoxkit.scoring import build_scorer
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
        before = {"steps": 0}  # steps of the rounds before this one: the curves' step goes on across rounds

        def on_log(step: int, curves: dict):
            if out:
                log_row(out.live, {"step": before["steps"] + step, **curves})

        start = time.perf_counter()
        engine = DPOEngine(model, tokenizer, dpo, params.seed, device, scratch, n=summary["n"])
        rollouts, trained, exact, rounds, reward = summary["generated_samples"], 0, 0, 0, None
        for round_ in range(1, dpo.rounds + 1):
            if round_ > 1:  # on-policy DPO: new pairs from the policy trained so far, on the same prompts
                reward = reward or build_scorer(params.reward, params.compute)
                records = policy_samples(sampler(model, tokenizer, device, params, round_), reward, records,
                                         params.reference, round_)
                rollouts += sum(len(r["responses"]) for r in records)
                pairs, counts = make_pairs(records, dpo.min_margin)
                if len(pairs) < dpo.min_pairs:
                    log.warning("round %d: %d pairs (fewer than %s.min_pairs %d): the policy's samples barely differ "
                                "in reward; stopping after round %d", round_, len(pairs), key, dpo.min_pairs, rounds)
                    break
                log.info("round %d of %d: %d pairs from the policy trained so far", round_, dpo.rounds, len(pairs))
            result = engine.train(pairs, on_log)
            before["steps"] += result["steps_done"]
            trained, exact, rounds = trained + len(pairs), exact + result["prompts_exact"], round_
        wall = time.perf_counter() - start
        if not out:
            return
        out.live.end()
        shutil.rmtree(scratch, ignore_errors=True)
        save_detoxified(out.out_dir, model, None, params.policy, adapter)
        TrainRecord(method.name, "dpo", steps_done=before["steps"], train_loss=result["train_loss"],
                    prompts_exact=exact, pairs=trained, prompts=counts["prompts"], rounds_done=rounds,
                    trainable_parameters=trainable, total_parameters=total, processes=world()[1],
                    rollouts=rollouts,  # the reference samples, and each further round's: DPO's training responses
                    optimizer_steps=before["steps"], settings=settings_of(dpo)).write(out.live_dir / "train.json")
        # the reference sampling counts as DPO's training cost: it is DPO's rollouts
        write_json(out.live_dir / "timing.json", {"wall_s": wall + summary["wall_s"], "train_wall_s": wall,
                                                  "reference_wall_s": summary["wall_s"], **peak_memory(device)})
    log.info("saved the %s adapter to %s after %d steps (%.1f s)", method.label, args.out, before["steps"], wall)


def sampler(model, tokenizer, device, params, round_: int):
    """The policy trained so far, sampling as the reference stage does (seeded anew each round)."""
    from detoxkit.evaluation import Sampler
    from detoxkit.generation import sampling_kwargs

    return Sampler(model, tokenizer, device, params.seed + round_, params.generation.batch_size,
                   params.compute.compile_generation, sampling_kwargs(params.generation))



if __name__ == "__main__":
    run_stage(main, parallel=True)
