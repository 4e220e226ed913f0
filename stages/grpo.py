"""Stage `grpo`: group-relative policy optimization of a fresh LoRA adapter (our engine: detoxkit.grpo_engine).

    python stages/grpo.py --data data/prepared --sft models/sft --out models/grpo \
        --live metrics/grpo_train --checkpoints checkpoints/grpo

The loop reads as PPO's does: for grpo.batch_size train prompts, sample grpo.group_size responses each from the
current policy, score them with the reward PPO uses, step (group advantages, clipped ratio, k3 KL to the
starting policy), log, checkpoint. No value head. Checkpoints (adapter, optimizer, step, logged history) go to
--checkpoints every grpo.checkpoint_every steps, under the rules of `ppo`'s (detoxkit.checkpoint); randomness
is re-seeded from (seed, step, rank) every step, so a resumed run draws what an uninterrupted one would.
`models/grpo` has models/ppo's layout (no value head), so evaluate, load_detoxified and publish serve it. With
`grpo.enabled: false` it writes placeholders. Under torchrun (compute.processes) each process takes its own
prompts and the gradients are averaged.
"""
import argparse
import contextlib
import functools
import logging
import os
import shutil
import time
from pathlib import Path

from detoxkit.config import check_split_sizes, load_params
from detoxkit.io import atomic_dir, clear_stale, hold, run_stage, write_json, write_placeholder, write_text
from detoxkit.parallel import is_main, setup

log = logging.getLogger("detox.grpo")
SECTIONS = ("policy", "reward", "generation")  # besides seed and grpo: what a checkpoint must share
SKIPPED_NOTE = "The GRPO stages are off (grpo.enabled is false): no adapter was trained.\n"


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", required=True)
    parser.add_argument("--sft", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--live", required=True, help="DVCLive folder for per-step metrics")
    parser.add_argument("--checkpoints", required=True, help="resumable state, outside DVC outputs")
    args = parser.parse_args()

    params = load_params()
    grpo, gen = params.grpo, params.generation
    if not grpo.enabled:
        if is_main():
            write_placeholder(args.out, SKIPPED_NOTE)
            with atomic_dir(args.live) as tmp:  # a header-only curve: `dvc plots show` accepts it
                for curve in ("env/reward_mean", "env/toxicity_mean", "grpo/kl"):  # every curve dvc.yaml plots
                    write_text(tmp / f"plots/metrics/{curve}.tsv", f"step\t{curve.rsplit('/', 1)[1]}\n")
                write_json(tmp / "train.json", {"method": "grpo", "enabled": False})
            log.info("grpo.enabled is false: wrote placeholders %s and %s", args.out, args.live)
        return

    from dvclive import Live

    from detoxkit.checkpoint import checkpoint_inputs, read_checkpoint, restore_checkpoint, Resume
    from detoxkit.data import load_prepared
    from detoxkit.generation import static_shape
    from detoxkit.grpo_engine import GRPOEngine
    from detoxkit.models import (attach_lora, check_lora_targets, check_policy_config, load_policy, peak_memory,
                                 start_adapter_path)
    from detoxkit.schedule import seed_step
    from detoxkit.scoring import build_scorer

    data = load_prepared(args.data)
    check_split_sizes(params, len(data["train"]), len(data["test"]), args.data, keys=("grpo.batch_size",),
                      world=int(os.environ.get("WORLD_SIZE", "1")))
    adapter = start_adapter_path(params.policy, args.sft)
    check_lora_targets(check_policy_config(params.policy), grpo.lora, "grpo.lora")  # before any weights load
    ckpt_dir = Path(args.checkpoints)
    inputs = functools.cache(lambda: checkpoint_inputs(params, args.data, adapter, SECTIONS, "grpo"))
    hold(ckpt_dir, args.out, args.live)  # one trainer at a time in these folders; a second is refused, named
    for out in (args.live, args.out):  # temporaries a killed run left behind
        clear_stale(Path(out))
    checkpoint = read_checkpoint(ckpt_dir, inputs, grpo.max_steps, "grpo.max_steps")  # before any model loads

    setup()  # under torchrun: join the process group
    seed_step(params.seed, 0)  # before the adapter is created: every process makes the same one
    scorer = build_scorer(params.reward, params.compute)
    model, tokenizer, device = load_policy(params.policy, params.compute, adapter)
    static = static_shape(params.compute.compile_generation, model, data["train"]["input_ids"],
                          gen.output_max_length - 1)
    engine = GRPOEngine(attach_lora(model, grpo.lora, "grpo.lora"), tokenizer, grpo, gen, device, static)
    trainable, total = engine.parameter_counts()
    log.info("trainable parameters (LoRA): %d of %d (%.2f%%)", trainable, total, 100 * trainable / total)
    resume = Resume(ckpt_dir, inputs())
    resume.start, resume.history = restore_checkpoint(engine, checkpoint, ckpt_dir)
    if resume.start:
        log.info("resuming from checkpoint at step %d of %d", resume.start, grpo.max_steps)
    with atomic_dir(args.live) if engine.is_main else contextlib.nullcontext() as live_dir:
        live = Live(str(live_dir), dvcyaml=False, save_dvc_exp=False) if engine.is_main else None
        for row in resume.history:
            live and log_row(live, row)
        start = time.perf_counter()
        history = train(engine, scorer, data["train"], params, live, resume)
        wall = time.perf_counter() - start
        engine.check_in_sync()
        if engine.is_main:
            responses = grpo.batch_size * grpo.group_size
            write_json(live_dir / "train.json", {
                "method": "grpo", "enabled": True, "steps_done": len(history),
                "trainable_parameters": trainable, "total_parameters": total,
                "rollouts": len(history) * responses * engine.world,  # responses generated to train
                "optimizer_steps": len(history) * grpo.epochs * (responses // grpo.mini_batch_size),
                "processes": engine.world,
                "settings": {"max_steps": grpo.max_steps, "learning_rate": grpo.learning_rate, "beta": grpo.beta,
                             "clip": grpo.clip, "group_size": grpo.group_size, "batch_size": grpo.batch_size,
                             "epochs": grpo.epochs, "scale_rewards": grpo.scale_rewards, "lora_r": grpo.lora.r},
                **({k: history[-1][k] for k in ("env/reward_mean", "env/toxicity_mean", "grpo/kl")} if history else {})})
            write_json(live_dir / "timing.json", {"wall_s": wall, "resumed_at_step": resume.start,
                                                  **peak_memory(device)})
            live.end()
            with atomic_dir(args.out) as tmp:
                engine.save(tmp, params.policy, adapter)
    if engine.is_main:
        shutil.rmtree(ckpt_dir, ignore_errors=True)  # finished: the outputs now hold the result
        log.info("saved the GRPO adapter to %s after %d steps", args.out, len(history))


def train(engine, scorer, train_split, params, live, resume) -> list[dict]:
    """The GRPO loop: sample a group per prompt, score, step, log, checkpoint. Returns the history."""
    import numpy as np
    from tqdm.auto import tqdm

    from detoxkit.checkpoint import check_finite, checkpoint_step
    from detoxkit.schedule import batch_indices, rollout_length, seed_step

    grpo, rank, world, history = params.grpo, engine.rank, engine.world, resume.history
    fix = "Lower grpo.learning_rate or raise grpo.beta"
    if world > 1:
        log.info("process %d of %d: %d prompts x %d responses per step here", rank, world, grpo.batch_size,
                 grpo.group_size)
    for step in tqdm(range(resume.start, grpo.max_steps), initial=resume.start, total=grpo.max_steps, desc="GRPO",
                     unit="step", disable=not engine.is_main):
        seed_step(params.seed, step, rank)
        batch = train_split.select(batch_indices(len(train_split), grpo.batch_size, step, params.seed, rank, world))
        queries = [list(ids) for ids in batch["input_ids"] for _ in range(grpo.group_size)]  # a group per prompt
        prompts = [q for q in batch["query"] for _ in range(grpo.group_size)]
        responses = engine.generate(queries, rollout_length(params.generation, params.seed, step))
        rewards, toxicity = scorer.score(prompts, engine.decode(responses))
        check_finite({"reward": float(np.sum(rewards))}, step, resume.dir, grpo.checkpoint_every, "GRPO", fix)
        stats = engine.step(queries, responses, rewards)
        row = {"step": step, "env/reward_mean": float(np.mean(rewards)), "env/toxicity_mean": float(np.mean(toxicity)),
               **stats}
        check_finite({k: row[k] for k in ("grpo/loss", "grpo/kl")}, step, resume.dir, grpo.checkpoint_every, "GRPO",
                     fix)
        history.append(row)
        if live:
            log_row(live, row)
        checkpoint_step(engine, resume, step + 1, grpo.checkpoint_every, grpo.max_steps)  # and stop here on SIGTERM
    return history


def log_row(live, row: dict):
    live.step = row["step"]
    for key, value in row.items():
        if key != "step":
            live.log_metric(key, value)


if __name__ == "__main__":
    run_stage(main, parallel=True)
