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
prompts and the gradients are averaged. With reward_transform vbon the step's reward is log F(score), F the
smoothed CDF of the prompt's reference rewards (detoxkit.stats.vbon_reward), on the train prompts the
reference stage sampled; the curves keep the raw score (env/reward_mean) beside it (vbon/reward_mean).
"""
import logging
from pathlib import Path

from detoxkit.errors import PipelineError
from detoxkit.io import run_stage
from detoxkit.parallel import setup, world
from detoxkit.online import OnlineRun

log = logging.getLogger("detox.grpo")


def main():
    run = OnlineRun.begin("grpo")  # the --method entry; data, checks, folders, checkpoint: before any model loads
    if run is None:  # the entry is off: placeholders written
        return
    from detoxkit.grpo_engine import GRPOEngine

    grpo, prompts, references, drawn = run.settings, run.data["train"], None, {"generated_samples": 0, "wall_s": 0.0}
    if grpo.reward_transform == "vbon":  # before any model loads: the prompts that have reference samples
        from detoxkit.preferences import reference_rewards

        prompts, references, drawn = reference_rewards(Path(run.args.reference), prompts)
        if len(prompts) < grpo.batch_size * world()[1]:
            raise PipelineError(f"{run.args.reference} has {len(prompts)} prompts, fewer than methods.{run.method.name}"
                                f".batch_size x processes ({grpo.batch_size} x {world()[1]}); raise "
                                "reference.num_prompts or lower the batch size")
        log.info("vbon reward: log CDF among the reference rewards of %d train prompts", len(prompts))
    setup()  # under torchrun: join the process group (the engine all-reduces the gradients itself)
    with run.session(lambda model, tokenizer, device, static: GRPOEngine(
            model, tokenizer, grpo, run.params.generation, device, static)) as engine:
        history = train(engine, run, prompts, references)
        engine.check_in_sync()
        responses = grpo.batch_size * grpo.group_size
        run.finish("grpo/kl", reference_wall_s=drawn["wall_s"], steps_done=len(history),
                   rollouts=len(history) * responses * engine.world + drawn["generated_samples"],  # vbon: + references
                   optimizer_steps=len(history) * grpo.epochs * (responses // grpo.mini_batch_size))


def train(engine, run: OnlineRun, train_split, references=None) -> list[dict]:
    """The GRPO loop: sample a group per prompt, score, step, log, checkpoint. Returns the history. With
    `references` (a prompt's reference rewards) the step's reward is the vbon transform of the score."""
    import numpy as np
    from tqdm.auto import tqdm

    from detoxkit.checkpoint import check_finite
    from detoxkit.schedule import batch_indices, rollout_length, seed_step

    from detoxkit.stats import vbon_reward

    grpo, params, g = run.settings, run.params, run.settings.group_size
    rank, world, resume = engine.rank, engine.world, run.resume
    fix = f"Lower methods.{run.method.name}.learning_rate or raise methods.{run.method.name}.beta"
    if world > 1:
        log.info("process %d of %d: %d prompts x %d responses per step here", rank, world, grpo.batch_size,
                 grpo.group_size)
    for step in tqdm(range(resume.start, grpo.max_steps), initial=resume.start, total=grpo.max_steps, desc="GRPO",
                     unit="step", disable=not engine.is_main):
        seed_step(params.seed, step, rank)
        chosen = batch_indices(len(train_split), grpo.batch_size, step, params.seed, rank, world)
        batch = train_split.select(chosen)
        queries = [list(ids) for ids in batch["input_ids"] for _ in range(g)]  # a group per prompt
        prompts = [q for q in batch["query"] for _ in range(g)]
        responses = engine.generate(queries, rollout_length(params.generation, params.seed, step))
        rewards, toxicity = run.scorer.score(prompts, engine.decode(responses))
        check_finite({"reward": float(np.sum(rewards))}, step, resume.dir, grpo.checkpoint_every, "GRPO", fix)
        shaped = rewards if references is None else np.concatenate(  # each group against its prompt's references
            [vbon_reward(rewards[k * g:(k + 1) * g], references[i]) for k, i in enumerate(chosen)])
        stats = engine.step(queries, responses, shaped)
        row = {"step": step, "env/reward_mean": float(np.mean(rewards)), "env/toxicity_mean": float(np.mean(toxicity)),
               **({} if references is None else {"vbon/reward_mean": float(np.mean(shaped))}), **stats}
        check_finite({k: row[k] for k in ("grpo/loss", "grpo/kl")}, step, resume.dir, grpo.checkpoint_every, "GRPO",
                     fix)
        run.log(row)
        run.step_done(engine, step + 1)  # a checkpoint on the cadence; after a SIGTERM, one now, then stop
    return resume.history


if __name__ == "__main__":
    run_stage(main, parallel=True)
