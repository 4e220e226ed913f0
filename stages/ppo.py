"""Stage `train@NAME` of a PPO methods entry: PPO (TRL) on the LoRA policy with the reward model's score.

    python stages/ppo.py --method ppo --data data/prepared --reference data/reference --sft models/sft \
        --out models/trained/ppo --live metrics/train/ppo --checkpoints checkpoints/ppo

The loop is the lab's: generate a batch of summaries, score them, `step(queries, responses, rewards)`,
log. Checkpoints (adapter, value head, optimizer, KL coefficient, step, logged history) go to
--checkpoints, outside DVC outputs, every checkpoint_every steps; a rerun with the same inputs
resumes from the last one. Randomness is re-seeded from (seed, step) at every step, so a resumed run
draws exactly what an uninterrupted one would. The bookkeeping (placeholders when the entry is off, the
checkpoints, DVCLive, train.json, the outputs written whole) is detoxkit.online's; this file is the loop.
"""
import logging

import numpy as np
import torch
from tqdm.auto import tqdm

from detoxkit.checkpoint import check_finite
from detoxkit.io import run_stage
from detoxkit.online import OnlineRun
from detoxkit.schedule import batch_indices, rollout_length, seed_step

log = logging.getLogger("detox.ppo")


def main():
    run = OnlineRun.begin("ppo")  # the --method entry; data, checks, folders, checkpoint: before any model loads
    if run is None:  # the entry is off: placeholders written
        return
    from detoxkit.ppo_engine import PPOEngine

    ppo, params = run.settings, run.params

    def engine(model, tokenizer, device, static):  # a value head on the LoRA policy; TRL's PPOTrainer
        return PPOEngine(model, tokenizer, ppo, params.generation, params.seed, cpu=device.type == "cpu", static=static)

    with run.session(engine) as ppo_engine:
        history, early_stop = train(ppo_engine, run)
        run.finish("objective/kl", steps_done=len(history), early_stopped=early_stop is not None,
                   early_stop_step=early_stop and early_stop["step"], early_stop_kl=early_stop and early_stop["kl"],
                   rollouts=len(history) * ppo.batch_size * ppo_engine.world,  # responses generated to train
                   optimizer_steps=len(history) * ppo.epochs * (ppo.batch_size // ppo.mini_batch_size))


def train(engine, run: OnlineRun):
    """The PPO loop: generate, score, step, log, checkpoint. Returns (history, early stop or None)."""
    from detoxkit.ppo_engine import LOGGED

    ppo, params, train_split = run.settings, run.params, run.data["train"]
    rank, world, resume = engine.rank, engine.world, run.resume
    fix = f"Lower methods.{run.method.name}.learning_rate or raise methods.{run.method.name}.init_kl_coef"
    if world > 1:
        log.info("process %d of %d: %d rollouts per step here, %d in all", rank, world, ppo.batch_size,
                 ppo.batch_size * world)
    good_state, early_stop = engine.trainable_state(), None
    for step in tqdm(range(resume.start, ppo.max_steps), initial=resume.start, total=ppo.max_steps, desc="PPO",
                     unit="step", disable=not engine.is_main):
        seed_step(params.seed, step, rank)
        batch = train_split.select(batch_indices(len(train_split), ppo.batch_size, step, params.seed, rank, world))
        queries = [torch.tensor(ids) for ids in batch["input_ids"]]
        responses = engine.generate(queries, rollout_length(params.generation, params.seed, step))
        rewards, toxicity = run.scorer.score(list(batch["query"]), engine.decode(responses))
        check_finite({"reward": float(np.sum(rewards))}, step, resume.dir, ppo.checkpoint_every, "PPO", fix)

        before_update = engine.trainable_state()
        stats = engine.step(queries, responses, rewards)
        row = {"step": step, "env/reward_mean": float(rewards.mean()), "env/toxicity_mean": float(toxicity.mean()),
               **{k: stats[k] for k in LOGGED if k in stats}}
        check_finite({k: row[k] for k in ("objective/kl", "ppo/loss/total")}, step, resume.dir, ppo.checkpoint_every,
                     "PPO", fix)
        if row["objective/kl"] > ppo.max_kl:
            early_stop = {"step": step, "kl": row["objective/kl"]}
            engine.load_trainable_state(good_state)
            log.warning("step %d: objective/kl %.2f > methods.%s.max_kl %.2f; stopping and keeping the policy of step "
                        "%d", step, row["objective/kl"], run.method.name, ppo.max_kl, step - 1)
            break
        good_state = before_update
        run.log(row)
        run.step_done(engine, step + 1)  # a checkpoint on the cadence; after a SIGTERM, one now, then stop
    return resume.history, early_stop


if __name__ == "__main__":
    run_stage(main, parallel=True)
