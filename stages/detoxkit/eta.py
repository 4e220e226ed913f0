"""The whole run's time, estimated early from a measured rate.

The `baseline` stage is the first that generates. It measures this machine's seconds per generated token (its own
samples, scored by the reward and the judges) and `log_estimate` prints, before any training starts, how long the
stages after it will take if they all run: each stage's generated tokens (from params.yaml) times that rate times
the stage's cost per generated token relative to an evaluation (COST, measured on the offline preset, 2 CPU cores:
docs/getting-started.md, presets). The estimate is only as good as those ratios; each stage's own progress bar then
measures its real rate and counts down its time left. It is the time on one process (compute.processes 1).
"""
import logging
from dataclasses import dataclass

log = logging.getLogger("detox.eta")

# Seconds per generated token in each stage, relative to the baseline evaluation's (generation + reward + judges),
# measured on the offline preset (SmolLM2-135M, 2 CPU cores, two runs on 2026-12-05, averaged; the whole estimate
# came within 15% of the time taken), then scaled by 1.12: on three fresh clones' runs (2026-12-05 and 06) the stages
# after the baseline took 1.14, 0.94 and 1.27 times the estimate (the machine's own speed varies that much). A trained
# policy's evaluation carries its LoRA layers; a PPO or GRPO rollout also pays the reference and value passes and
# the optimizer step; a DPO pair two sequences' forward and backward passes through policy and reference; best-of-N
# and the reference samples generate many samples per prompt and judge only the kept ones. Each stage also starts a
# process and loads its models (STARTUP seconds on that machine, scaled like the rest); the placeholders of a
# stage that is off are left out, as in the runs the ratios were fitted on.
SCALE = 1.12
COST = {name: round(SCALE * cost, 3) for name, cost in {"evaluate": 1.25, "ppo": 2.8, "grpo": 2.1, "reference": 0.78,
                                                       "dpo": 1.27, "best_of_n": 0.63}.items()}
STARTUP = 7.0 * SCALE
BASELINE_RATE = 0.0116  # seconds a generated token in those runs' baselines (12.7 and 10.5 ms)


@dataclass(frozen=True)
class Part:
    stage: str
    tokens: float  # generated (or, for DPO, trained) tokens
    cost: float  # relative to an evaluation's, per token

    def seconds(self, rate: float) -> float:
        return self.tokens * self.cost * rate + STARTUP * rate / BASELINE_RATE


def _count(value, available: int) -> int:
    return available if value == "all" else min(int(value), available)


def remaining_parts(params, train_prompts: int, test_prompts: int) -> list[Part]:
    """The work after `baseline`, stage by stage, for the stages that are on."""
    ev, gen = params.evaluation, params.generation
    samples = _count(ev.num_samples, test_prompts) * ev.samples_per_prompt
    eval_tokens = samples * ev.max_new_tokens
    rollout = (gen.output_min_length + gen.output_max_length) / 2  # tokens, drawn from [min, max) each batch
    ref = params.reference
    prompts = _count(ref.num_prompts, train_prompts)
    parts = [Part("reference", prompts * ref.n * ref.max_new_tokens, COST["reference"])] if prompts else []
    for name, m in params.methods.items():
        if not m.enabled:
            continue
        if m.algorithm == "ppo":
            parts.append(Part(f"train@{name}", m.max_steps * m.batch_size * rollout, COST["ppo"]))
        elif m.algorithm == "grpo":
            parts.append(Part(f"train@{name}", m.max_steps * m.batch_size * m.group_size * rollout, COST["grpo"]))
        else:  # dpo: pairs trained on (at most one a prompt), capped by max_steps; each further round samples anew
            seen = prompts * m.epochs if m.max_steps < 0 else min(prompts * m.epochs, m.max_steps * m.batch_size)
            parts.append(Part(f"train@{name}", m.rounds * seen * 2 * ref.max_new_tokens, COST["dpo"]))
            if m.rounds > 1:
                parts.append(Part(f"train@{name} sampling", (m.rounds - 1) * prompts * ref.n * ref.max_new_tokens,
                                  COST["reference"]))
        parts.append(Part(f"evaluate@{name}", eval_tokens, COST["evaluate"]))
        if params.best_of_n.on(name):
            parts.append(Part(f"bon@{name}", eval_tokens * params.best_of_n.n, COST["best_of_n"]))
    if params.best_of_n.enabled:
        parts.append(Part("best_of_n", eval_tokens * params.best_of_n.n, COST["best_of_n"]))
    return parts + [Part("report", 0, 0.0), Part("publish", 0, 0.0)]


def _minutes(seconds: float, digits: int = 0) -> str:
    return f"{seconds / 60:.{digits}f} min" if seconds >= 30 else f"{seconds:.0f} s"


def log_estimate(params, train_prompts: int, test_prompts: int, seconds: float, tokens: int) -> float:
    """Print the estimate for the rest of the run from baseline's `seconds` for `tokens` generated tokens; return
    the estimated seconds left."""
    if tokens <= 0 or seconds <= 0:
        return 0.0
    rate = seconds / tokens
    parts = remaining_parts(params, train_prompts, test_prompts)
    left = sum(p.seconds(rate) for p in parts)
    log.info("estimated time left if every stage after this runs: about %s (%s; from this stage's %.0f ms a "
             "generated token); each stage's bar then counts down its own", _minutes(left),
             ", ".join(f"{p.stage} {_minutes(p.seconds(rate), 1)}" for p in parts), 1000 * rate)
    return left
