"""Stage `ppo`: PPO (TRL) on the LoRA policy with the hate-speech classifier's not-hate logit as reward.

    python stages/ppo.py --data data/prepared --sft models/sft --out models/ppo \
        --live metrics/ppo_train --checkpoints checkpoints/ppo

The loop is the lab's: generate a batch of summaries, score them, `step(queries, responses, rewards)`,
log. Checkpoints (adapter, value head, optimizer, KL coefficient, step, logged history) go to
--checkpoints, outside DVC outputs, every ppo.checkpoint_every steps; a rerun with the same inputs
resumes from the last one. Randomness is re-seeded from (seed, step) at every step, so a resumed run
draws exactly what an uninterrupted one would.
"""
import argparse
import contextlib
import functools
import logging
import os
import shutil
import time
from pathlib import Path

import numpy as np
import torch
from dvclive import Live
from tqdm.auto import tqdm

from detoxkit.checkpoint import (Resume, check_finite, checkpoint_inputs, checkpoint_step, read_checkpoint,
                                 restore_checkpoint)
from detoxkit.config import check_split_sizes, load_params
from detoxkit.data import load_prepared
from detoxkit.generation import static_shape
from detoxkit.io import atomic_dir, clear_stale, hold, run_stage, write_json
from detoxkit.models import (attach_lora, check_lora_targets, check_policy_config, load_policy, peak_memory,
                             start_adapter_path)
from detoxkit.ppo_engine import LOGGED, PPOEngine
from detoxkit.schedule import batch_indices, rollout_length, seed_step
from detoxkit.scoring import build_scorer

log = logging.getLogger("detox.ppo")
SECTIONS = ("policy", "reward", "lora", "generation")  # besides seed and ppo: what a checkpoint must share


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", required=True)
    parser.add_argument("--sft", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--live", required=True, help="DVCLive folder for per-step metrics")
    parser.add_argument("--checkpoints", required=True, help="resumable state, outside DVC outputs")
    args = parser.parse_args()

    params = load_params()
    ppo, gen = params.ppo, params.generation
    data = load_prepared(args.data)
    check_split_sizes(params, len(data["train"]), len(data["test"]), args.data, keys=("ppo.batch_size",),
                      world=int(os.environ.get("WORLD_SIZE", "1")))  # torchrun / accelerate set it
    train_split = data["train"]
    adapter = start_adapter_path(params.policy, args.sft)
    check_lora_targets(check_policy_config(params.policy), params.lora)  # before any weights load
    ckpt_dir = Path(args.checkpoints)
    inputs = functools.cache(lambda: checkpoint_inputs(params, args.data, adapter, SECTIONS, "ppo"))  # hashes: once, when needed
    hold(ckpt_dir, args.out, args.live)  # one trainer at a time in these folders; a second is refused, named
    for out in (args.live, args.out):  # temporaries a killed run left behind
        clear_stale(Path(out))
    checkpoint = read_checkpoint(ckpt_dir, inputs, ppo.max_steps)  # before any model loads: a bad one costs nothing

    seed_step(params.seed, 0)  # before any model or value head is created
    scorer = build_scorer(params.reward, params.compute)
    model, tokenizer, device = load_policy(params.policy, params.compute, adapter)
    # rollout lengths are drawn from [min, max): one static cache for the longest
    static = static_shape(params.compute.compile_generation, model, train_split["input_ids"],
                          gen.output_max_length - 1)
    engine = PPOEngine(attach_lora(model, params.lora), tokenizer, ppo, gen, params.seed, cpu=device.type == "cpu",
                       static=static)
    trainable, total = engine.parameter_counts()
    log.info("trainable parameters (LoRA + value head): %d of %d (%.2f%%)", trainable, total, 100 * trainable / total)

    resume = Resume(ckpt_dir, inputs())
    resume.start, resume.history = restore_checkpoint(engine, checkpoint, ckpt_dir)
    if resume.start:
        log.info("resuming from checkpoint at step %d of %d", resume.start, ppo.max_steps)
    # The curves are written to a temporary folder that replaces --live only when training ends, so a
    # killed run leaves no partial output; a resumed run replays the logged history into it.
    with atomic_dir(args.live) if engine.is_main else contextlib.nullcontext() as live_dir:
        live = Live(str(live_dir), dvcyaml=False, save_dvc_exp=False) if engine.is_main else None
        for row in resume.history:
            live and _log_row(live, row)
        start = time.perf_counter()
        history, early_stop = train(engine, scorer, train_split, params, live, resume)
        wall = time.perf_counter() - start  # this run's; a resumed run's earlier steps are not counted again
        if engine.is_main:
            summary = {"method": "ppo", "steps_done": len(history), "early_stopped": early_stop is not None,
                       "early_stop_step": early_stop["step"] if early_stop else None,
                       "early_stop_kl": early_stop["kl"] if early_stop else None,
                       "trainable_parameters": trainable, "total_parameters": total,
                       "rollouts": len(history) * ppo.batch_size * engine.world,  # responses generated to train
                       "optimizer_steps": len(history) * ppo.epochs * (ppo.batch_size // ppo.mini_batch_size),
                       "settings": {"max_steps": ppo.max_steps, "learning_rate": ppo.learning_rate,  # for the report
                                    "init_kl_coef": ppo.init_kl_coef, "adaptive_kl": ppo.adaptive_kl,
                                    "batch_size": ppo.batch_size, "lora_r": params.lora.r}}
            if history:
                summary.update({k: history[-1][k] for k in ("env/reward_mean", "env/toxicity_mean", "objective/kl")})
            write_json(live_dir / "train.json", summary)
            # wall time apart: train.json stays identical between a resumed run and an uninterrupted one
            write_json(live_dir / "timing.json", {"wall_s": wall, "resumed_at_step": resume.start, **peak_memory(device)})
            live.end()
            with atomic_dir(args.out) as tmp:
                engine.save(tmp, params.policy, adapter)
    if engine.is_main:
        shutil.rmtree(ckpt_dir, ignore_errors=True)  # finished: the outputs now hold the result
        log.info("saved the PPO adapter and value head to %s after %d steps", args.out, len(history))


def train(engine, scorer, train_split, params, live, resume: Resume):
    """The PPO loop: generate, score, step, log, checkpoint. Returns (history, early stop or None)."""
    ppo, gen = params.ppo, params.generation
    rank, world, history = engine.rank, engine.world, resume.history
    if world > 1:
        log.info("process %d of %d: %d rollouts per step here, %d in all", rank, world, ppo.batch_size,
                 ppo.batch_size * world)
    good_state, early_stop = engine.trainable_state(), None
    for step in tqdm(range(resume.start, ppo.max_steps), initial=resume.start, total=ppo.max_steps, desc="PPO",
                     unit="step", disable=not engine.is_main):
        seed_step(params.seed, step, rank)
        batch = train_split.select(batch_indices(len(train_split), ppo.batch_size, step, params.seed, rank, world))
        queries = [torch.tensor(ids) for ids in batch["input_ids"]]
        responses = engine.generate(queries, rollout_length(gen, params.seed, step))
        rewards, toxicity = scorer.score(list(batch["query"]), engine.decode(responses))
        check_finite({"reward": float(np.sum(rewards))}, step, resume.dir, ppo.checkpoint_every)

        before_update = engine.trainable_state()
        stats = engine.step(queries, responses, rewards)
        row = {"step": step, "env/reward_mean": float(rewards.mean()), "env/toxicity_mean": float(toxicity.mean()),
               **{k: stats[k] for k in LOGGED if k in stats}}
        check_finite({k: row[k] for k in ("objective/kl", "ppo/loss/total")}, step, resume.dir, ppo.checkpoint_every)
        if row["objective/kl"] > ppo.max_kl:
            early_stop = {"step": step, "kl": row["objective/kl"]}
            engine.load_trainable_state(good_state)
            log.warning("step %d: objective/kl %.2f > ppo.max_kl %.2f; stopping and keeping the policy of step %d",
                        step, row["objective/kl"], ppo.max_kl, step - 1)
            break
        good_state = before_update
        history.append(row)
        if live:
            _log_row(live, row)
        checkpoint_step(engine, resume, step + 1, ppo.checkpoint_every, ppo.max_steps)  # and stop here on SIGTERM
    return history, early_stop


def _log_row(live, row: dict):
    live.step = row["step"]
    for key, value in row.items():
        if key != "step":
            live.log_metric(key, value)


if __name__ == "__main__":
    run_stage(main, parallel=True)
