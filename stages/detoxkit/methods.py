"""The methods, as data. Two tables:

- `ALGORITHMS`: what the code knows, one row an algorithm (PPO, DPO, GRPO, best-of-N): its label, whether it trains
  weights, the curves its training stage logs, the report's panels, the model card's description. A new algorithm is
  a row here, its settings class (detoxkit.settings) and its training script (stages/<algorithm>.py).
- `params.yaml`'s `methods:` section: what a run trains, one named entry a method, each with `algorithm:` and its
  own settings beside it. A variant (GRPO with another learning rate, two DPO betas side by side) is one more entry
  under a new name, with no code: dvc.yaml's `foreach` makes its stages (train@NAME, evaluate@NAME) and the report
  and publish read every entry. `methods_of(params)` lists them, in params.yaml's order, then best-of-N.

An entry's name is its files' name: models/trained/NAME, metrics/train/NAME, data/samples/NAME.csv,
metrics/compare/NAME.json, metrics/headline/NAME.json. best-of-N is a sampling procedure on the starting policy:
it trains no weights, so it has no adapter to publish; its settings are the `best_of_n:` section.
"""
from __future__ import annotations

import dataclasses
import re
from typing import Optional


@dataclasses.dataclass(frozen=True)
class Algorithm:
    name: str  # the `algorithm:` of a methods entry; its training script is stages/<name>.py
    label: str  # how the report, the card and the logs call it
    trains_weights: bool  # a LoRA adapter comes out (publish can serve it)
    value_head: bool  # the adapter folder also holds a value head (PPO's)
    curves: tuple[str, ...] = ()  # DVCLive curves its training stage logs: a stage that is off writes each, header only
    panels: tuple[tuple[str, str], ...] = ()  # its own curves in the report's training figure: (curve, title)
    describe: str = ""  # what it is, for the model card's first paragraph
    library: Optional[str] = None  # the training library, a model-card tag (None: our own engine)


ALGORITHMS = (
    Algorithm("ppo", "PPO", trains_weights=True, value_head=True,
              curves=("env/reward_mean", "env/toxicity_mean", "objective/kl", "ppo/returns/mean",
                      "ppo/policy/advantages_mean"),
              panels=(("objective/kl", "PPO: KL to reference (nats per response)"),),
              describe="trained with PPO (TRL, value head, KL penalty against the frozen starting policy)",
              library="trl"),
    Algorithm("dpo", "DPO", trains_weights=True, value_head=False, curves=("dpo/loss", "dpo/reward_margin"),
              panels=(("dpo/loss", "DPO: loss"),),
              describe="trained with DPO (TRL's DPOTrainer, on preference pairs ranked by the reward model from the "
                       "starting policy's own samples; the starting policy is the reference)",
              library="trl"),
    Algorithm("grpo", "GRPO", trains_weights=True, value_head=False,
              curves=("env/reward_mean", "env/toxicity_mean", "grpo/kl"),
              panels=(("grpo/kl", "GRPO: KL to reference (per token)"),),
              describe="trained with GRPO (group-relative advantages over several responses per prompt, clipped "
                       "ratio, k3 KL to the starting policy; no value head)"),
    Algorithm("best_of_n", "best-of-N", trains_weights=False, value_head=False),
)
BY_ALGORITHM = {a.name: a for a in ALGORITHMS}
TRAINING = tuple(a.name for a in ALGORITHMS if a.trains_weights)  # the algorithms a methods entry may name
BEST_OF_N = "best_of_n"  # the sampling method's name: its comparison file, samples and headline
NAME = re.compile(r"[a-z][a-z0-9_]{0,39}")  # an entry's name: a file, stage and params key
RESERVED = {"start", "baseline", BEST_OF_N, "sft", "best"}  # names the pipeline's other files and settings use


@dataclasses.dataclass(frozen=True)
class Method:
    """One method of a run: a methods entry of params.yaml (or best-of-N), with its algorithm's row."""
    name: str
    algorithm: Algorithm
    enabled: bool
    settings: object  # the entry's settings (detoxkit.settings), or best_of_n's section
    on: Optional["Method"] = None  # best-of-N on this trained method's policy (NAME+bon), not on the start

    @property
    def label(self) -> str:
        """The algorithm's label for the entry named after it (ppo: PPO); a variant is called by its own name;
        best-of-N on a trained policy, `PPO + best-of-N`."""
        if self.on is not None:
            return f"{self.on.label} + {self.algorithm.label}"
        return self.algorithm.label if self.name == self.algorithm.name else self.name

    @property
    def trains_weights(self) -> bool:
        return self.algorithm.trains_weights


ON_TRAINED = "+bon"  # best-of-N on a trained method's policy: NAME+bon (a methods entry's name has no +)


def methods_of(params) -> list[Method]:
    """Every method of the run: the methods entries in params.yaml's order, then best-of-N, then (best_of_n.on_trained)
    best-of-N on each entry's policy, or on the entries it lists."""
    entries = [Method(name, BY_ALGORITHM[s.algorithm], s.enabled, s) for name, s in params.methods.items()]
    bon, algorithm = params.best_of_n, BY_ALGORITHM[BEST_OF_N]
    return [*entries, Method(BEST_OF_N, algorithm, bon.enabled, bon),
            *(Method(m.name + ON_TRAINED, algorithm, bon.on(m.name) and m.enabled, bon, on=m)
              for m in entries if bon.covers(m.name))]


def trained_of(params) -> list[Method]:
    """The methods entries (every one trains weights), in params.yaml's order."""
    return [m for m in methods_of(params) if m.trains_weights]


def listed(names) -> str:
    """`a, b or c`: names in a message."""
    names = list(names)
    return " or ".join([", ".join(names[:-1]), names[-1]]) if len(names) > 1 else "".join(names)
