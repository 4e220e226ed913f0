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
import logging

from detoxkit.config import check_split_sizes, load_params
from detoxkit.io import run_stage
from detoxkit.parallel import setup, world
from detoxkit.online import OnlineRun, online_args
from detoxkit.training import TrainRecord, skip

log = logging.getLogger("detox.grpo")
SECTIONS = ("policy", "reward", "generation")  # besides seed and grpo: what a checkpoint must share


def main():
    args = online_args()
    params = load_params()
    grpo, gen = params.grpo, params.generation
    if skip("grpo", params, args.out, args.live):
        return
    from detoxkit.data import load_prepared
    from detoxkit.generation import static_shape
    from detoxkit.grpo_engine import GRPOEngine
    from detoxkit.models import attach_lora, check_lora_targets, check_policy_config, load_policy, start_adapter_path
    from detoxkit.schedule import seed_step
    from detoxkit.scoring import build_scorer

    data = load_prepared(args.data)
    check_split_sizes(params, len(data["train"]), len(data["test"]), args.data, keys=("grpo.batch_size",),
                      world=world()[1])
    adapter = start_adapter_path(params.policy, args.sft)
    check_lora_targets(check_policy_config(params.policy), grpo.lora, "grpo.lora")  # before any weights load
    run = OnlineRun("grpo", params, args, adapter, SECTIONS)  # before any model loads: a bad checkpoint costs nothing

    setup()  # under torchrun: join the process group
    seed_step(params.seed, 0)  # before the adapter is created: every process makes the same one
    scorer = build_scorer(params.reward, params.compute)
    model, tokenizer, device = load_policy(params.policy, params.compute, adapter)
    static = static_shape(params.compute.compile_generation, model, data["train"]["input_ids"],
                          gen.output_max_length - 1)
    engine = GRPOEngine(attach_lora(model, grpo.lora, "grpo.lora"), tokenizer, grpo, gen, device, static)
    trainable, total = engine.parameter_counts()
    log.info("trainable parameters (LoRA): %d of %d (%.2f%%)", trainable, total, 100 * trainable / total)
    with run.session(engine, device):
        history = train(engine, scorer, data["train"], params, run)
        engine.check_in_sync()
        responses = grpo.batch_size * grpo.group_size
        run.finish(TrainRecord("grpo", steps_done=len(history), trainable_parameters=trainable, total_parameters=total,
                               rollouts=len(history) * responses * engine.world,  # responses generated to train
                               optimizer_steps=len(history) * grpo.epochs * (responses // grpo.mini_batch_size)),
                   lambda folder: engine.save(folder, params.policy, adapter), kl_key="grpo/kl")


def train(engine, scorer, train_split, params, run: OnlineRun) -> list[dict]:
    """The GRPO loop: sample a group per prompt, score, step, log, checkpoint. Returns the history."""
    import numpy as np
    from tqdm.auto import tqdm

    from detoxkit.checkpoint import check_finite
    from detoxkit.schedule import batch_indices, rollout_length, seed_step

    grpo, rank, world, resume = params.grpo, engine.rank, engine.world, run.resume
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
        run.log(row)
        run.step_done(engine, step + 1)  # a checkpoint on the cadence; after a SIGTERM, one now, then stop
    return resume.history


if __name__ == "__main__":
    run_stage(main, parallel=True)
