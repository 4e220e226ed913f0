"""Stage `ppo`: PPO (TRL) on the LoRA policy with the hate-speech classifier's not-hate logit as reward.

    python stages/ppo.py --data data/prepared --sft models/sft --out models/ppo \
        --live metrics/ppo_train --checkpoints checkpoints/ppo

The loop is the lab's: generate a batch of summaries, score them, `step(queries, responses, rewards)`,
log. Checkpoints (adapter, value head, optimizer, KL coefficient, step, logged history) go to
--checkpoints, outside DVC outputs, every ppo.checkpoint_every steps; a rerun with the same inputs
resumes from the last one. Randomness is re-seeded from (seed, step) at every step, so a resumed run
draws exactly what an uninterrupted one would.
"""
import logging

import numpy as np
import torch
from tqdm.auto import tqdm

from detoxkit.checkpoint import check_finite
from detoxkit.config import check_split_sizes, load_params
from detoxkit.data import load_prepared
from detoxkit.generation import static_shape
from detoxkit.io import run_stage
from detoxkit.models import attach_lora, check_lora_targets, check_policy_config, load_policy, start_adapter_path
from detoxkit.parallel import world
from detoxkit.ppo_engine import LOGGED, PPOEngine
from detoxkit.schedule import batch_indices, rollout_length, seed_step
from detoxkit.scoring import build_scorer
from detoxkit.online import OnlineRun, online_args
from detoxkit.training import TrainRecord, skip

log = logging.getLogger("detox.ppo")
SECTIONS = ("policy", "reward", "generation")  # besides seed and ppo: what a checkpoint must share


def main():
    args = online_args()
    params = load_params()
    ppo, gen = params.ppo, params.generation
    if skip("ppo", params, args.out, args.live):
        return
    data = load_prepared(args.data)
    check_split_sizes(params, len(data["train"]), len(data["test"]), args.data, keys=("ppo.batch_size",),
                      world=world()[1])
    adapter = start_adapter_path(params.policy, args.sft)
    check_lora_targets(check_policy_config(params.policy), ppo.lora, "ppo.lora")  # before any weights load
    run = OnlineRun("ppo", params, args, adapter, SECTIONS)  # before any model loads: a bad checkpoint costs nothing

    seed_step(params.seed, 0)  # before any model or value head is created
    scorer = build_scorer(params.reward, params.compute)
    model, tokenizer, device = load_policy(params.policy, params.compute, adapter)
    # rollout lengths are drawn from [min, max): one static cache for the longest
    static = static_shape(params.compute.compile_generation, model, data["train"]["input_ids"],
                          gen.output_max_length - 1)
    engine = PPOEngine(attach_lora(model, ppo.lora, "ppo.lora"), tokenizer, ppo, gen, params.seed,
                       cpu=device.type == "cpu", static=static)
    trainable, total = engine.parameter_counts()
    log.info("trainable parameters (LoRA + value head): %d of %d (%.2f%%)", trainable, total, 100 * trainable / total)
    with run.session(engine, device):
        history, early_stop = train(engine, scorer, data["train"], params, run)
        run.finish(TrainRecord("ppo", steps_done=len(history), early_stopped=early_stop is not None,
                               early_stop_step=early_stop and early_stop["step"],
                               early_stop_kl=early_stop and early_stop["kl"],
                               trainable_parameters=trainable, total_parameters=total,
                               rollouts=len(history) * ppo.batch_size * engine.world,  # responses generated to train
                               optimizer_steps=len(history) * ppo.epochs * (ppo.batch_size // ppo.mini_batch_size)),
                   lambda folder: engine.save(folder, params.policy, adapter), kl_key="objective/kl")


def train(engine, scorer, train_split, params, run: OnlineRun):
    """The PPO loop: generate, score, step, log, checkpoint. Returns (history, early stop or None)."""
    ppo, gen = params.ppo, params.generation
    rank, world, resume = engine.rank, engine.world, run.resume
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
        run.log(row)
        run.step_done(engine, step + 1)  # a checkpoint on the cadence; after a SIGTERM, one now, then stop
    return resume.history, early_stop


if __name__ == "__main__":
    run_stage(main, parallel=True)
