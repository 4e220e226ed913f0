"""The methods, as data: one row each, in the order the report shows them. Settings (config), the early checks,
the comparison, the report's figures, the model card, the placeholders of a stage that is off, the tests and the
bench read this table; nothing else lists the methods.

A row's `name` is its params.yaml section and the name of its files (models/NAME, metrics/NAME_train,
data/samples/NAME.csv, metrics/compare/NAME.json). best-of-N is a sampling procedure on the starting policy: it
trains no weights, so it has no adapter to publish.
"""
from __future__ import annotations

import dataclasses
from typing import Optional


@dataclasses.dataclass(frozen=True)
class Method:
    name: str  # params.yaml section; file and stage names
    label: str  # how the report, the card and the logs call it
    algorithm: str  # its settings class and training code: ppo, dpo, grpo, best_of_n
    trains_weights: bool  # a LoRA adapter comes out (publish can serve it)
    value_head: bool  # the adapter folder also holds a value head (PPO's)
    curves: tuple[str, ...] = ()  # DVCLive curves dvc.yaml plots: a stage that is off writes each, header only
    panels: tuple[tuple[str, str], ...] = ()  # its own curves in the report's training figure: (curve, title)
    describe: str = ""  # what it is, for the model card's first paragraph
    library: Optional[str] = None  # the training library, a model-card tag (None: our own engine)


METHODS = (
    Method("ppo", "PPO", "ppo", trains_weights=True, value_head=True,
           curves=("env/reward_mean", "env/toxicity_mean", "objective/kl", "ppo/returns/mean",
                   "ppo/policy/advantages_mean"),
           panels=(("objective/kl", "PPO: KL to reference (nats per response)"),),
           describe="trained with PPO (TRL, value head, KL penalty against the frozen starting policy)",
           library="trl"),
    Method("dpo", "DPO", "dpo", trains_weights=True, value_head=False, curves=("dpo/loss", "dpo/reward_margin"),
           panels=(("dpo/loss", "DPO: loss"),),
           describe="trained with DPO (TRL's DPOTrainer, on preference pairs ranked by the reward model from the "
                    "starting policy's own samples; the starting policy is the reference)",
           library="trl"),
    Method("grpo", "GRPO", "grpo", trains_weights=True, value_head=False,
           curves=("env/reward_mean", "env/toxicity_mean", "grpo/kl"),
           panels=(("grpo/kl", "GRPO: KL to reference (per token)"),),
           describe="trained with GRPO (group-relative advantages over several responses per prompt, clipped "
                    "ratio, k3 KL to the starting policy; no value head)"),
    Method("best_of_n", "best-of-N", "best_of_n", trains_weights=False, value_head=False),
)
BY_NAME = {m.name: m for m in METHODS}
LABELS = {m.name: m.label for m in METHODS}
TRAINED = tuple(m.name for m in METHODS if m.trains_weights)


def listed(names) -> str:
    """`a, b or c`: names in a message."""
    names = list(names)
    return " or ".join([", ".join(names[:-1]), names[-1]]) if len(names) > 1 else "".join(names)


def get(name: str) -> Method:
    from .errors import PipelineError

    if name not in BY_NAME:
        raise PipelineError(f"unknown method {name!r}: the methods are {list(BY_NAME)}")
    return BY_NAME[name]
