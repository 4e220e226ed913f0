"""Stage `train@NAME` of a GRPO methods entry: group-relative policy optimization of a fresh LoRA adapter (our
engine: detoxkit.grpo_engine).

    python stages/grpo.py --method grpo --data data/prepared --reference data/reference --sft models/sft \
        --out models/trained/grpo --live metrics/train/grpo --checkpoints checkpoints/grpo

The loop reads as PPO's does: for batch_size train prompts, sample group_size responses each from the
current policy, score them with the reward PPO uses, step (group advantages, clipped ratio, k3 KL to the
starting policy), log, checkpoint. No value head. Checkpoints (adapter, optimizer, step, logged history) go to
--checkpoints every checkpoint_every steps, under the rules of PPO's (detoxkit.checkpoint); randomness
is re-seeded from (seed, step, rank) every step, so a resumed run draws what an uninterrupted one would.
Its adapter folder has PPO's layout (no value head), so evaluate, load_detoxified and publish serve it. An entry
that is off writes placeholders. Under torchrun (compute.processes) each process takes its own
prompts and the gradients are averaged.
"""
import logging

from detoxkit.io import run_stage
from detoxkit.parallel import setup
from detoxkit.online import OnlineRun

log = logging.getLogger("detox.grpo")


def main():
    run = OnlineRun.begin("grpo")  # the --method entry; data, checks, folders, checkpoint: before any model loads
    if run is None:  # the entry is off: placeholders written
        return
    from detoxkit.grpo_engine import GRPOEngine

    grpo = run.settings
    setup()  # under torchrun: join the process group (the engine all-reduces the gradients itself)
    with run.session(lambda model, tokenizer, device, static: GRPOEngine(
            model, tokenizer, grpo, run.params.generation, device, static)) as engine:
        history = train(engine, run)
        engine.check_in_sync()
        responses = grpo.batch_size * grpo.group_size
        run.finish("grpo/kl", steps_done=len(history), rollouts=len(history) * responses * engine.world,
                   optimizer_steps=len(history) * grpo.epochs * (responses // grpo.mini_batch_size))


def train(engine, run: OnlineRun) -> list[dict]:
    """The GRPO loop: sample a group per prompt, score, step, log, checkpoint. Returns the history."""
    import numpy as np
    from tqdm.auto import tqdm

    from detoxkit.checkpoint import check_finite
    from detoxkit.schedule import batch_indices, rollout_length, seed_step

    grpo, params, train_split = run.settings, run.params, run.data["train"]
    rank, world, resume = engine.rank, engine.world, run.resume
    fix = f"Lower methods.{run.method.name}.learning_rate or raise methods.{run.method.name}.beta"
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
        rewards, toxicity = run.scorer.score(prompts, engine.decode(responses))
        check_finite({"reward": float(np.sum(rewards))}, step, resume.dir, grpo.checkpoint_every, "GRPO", fix)
        stats = engine.step(queries, responses, rewards)
        row = {"step": step, "env/reward_mean": float(np.mean(rewards)), "env/toxicity_mean": float(np.mean(toxicity)),
               **stats}
        check_finite({k: row[k] for k in ("grpo/loss", "grpo/kl")}, step, resume.dir, grpo.checkpoint_every, "GRPO",
                     fix)
        run.log(row)
        run.step_done(engine, step + 1)  # a checkpoint on the cadence; after a SIGTERM, one now, then stop
    return resume.history


if __name__ == "__main__":
    run_stage(main, parallel=True)
