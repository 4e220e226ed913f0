"""The bookkeeping every training stage shares, so that a stage shows its algorithm and nothing else.

- `begin`: the command line every training script takes (dvc.yaml's train@NAME template runs
  `stages/<algorithm>.py --method NAME ...` for each methods entry), params.yaml, and the entry it names.
- `skip`: a method that is off writes placeholders (SKIPPED.md, a header-only file for every curve plots/dvc.yaml draws,
  a train.json that says so), so that its DVC outputs exist and `dvc plots show` still works.
- `TrainRecord`: train.json, one schema for every method (None where a field does not apply).
- `outputs`: the adapter folder and the DVCLive folder, written whole when training ends or not at all; one writer
  (the main process) under torchrun.

The online methods' checkpoints and folders: detoxkit.online (OnlineRun).
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import logging
import math
from pathlib import Path
from typing import Optional

from .config import load_params
from .errors import PipelineError
from .io import atomic_dir, write_json, write_placeholder, write_text
from .methods import Method, methods_of
from .parallel import is_main

log = logging.getLogger("detox.training")


@dataclasses.dataclass
class TrainRecord:
    """train.json: what a training stage did and what it cost, the same keys for every method."""
    method: str  # the methods entry's name
    algorithm: str
    enabled: bool = True
    steps_done: Optional[int] = None  # optimizer steps (DPO) or training steps (PPO, GRPO) done
    early_stopped: bool = False
    early_stop_step: Optional[int] = None
    early_stop_kl: Optional[float] = None
    rollouts: Optional[int] = None  # responses generated to train (DPO: the pair samples)
    optimizer_steps: Optional[int] = None
    processes: Optional[int] = None
    trainable_parameters: Optional[int] = None
    total_parameters: Optional[int] = None
    pairs: Optional[int] = None  # DPO: preference pairs trained on
    prompts: Optional[int] = None  # DPO: train prompts sampled for pairs
    prompts_exact: Optional[int] = None  # DPO: prompts TRL tokenized exactly as prepare built them
    train_loss: Optional[float] = None  # DPO: the trainer's mean loss (of its last round)
    rounds_done: Optional[int] = None  # DPO: rounds trained (each after the first on pairs from the policy itself)
    last_reward_mean: Optional[float] = None  # online methods: the last step's batch means
    last_toxicity_mean: Optional[float] = None
    last_kl: Optional[float] = None  # the method's own KL curve (PPO: per response; GRPO: per token)
    settings: dict = dataclasses.field(default_factory=dict)  # the method's settings, for the report and the card

    def write(self, path: Path):
        write_json(path, dataclasses.asdict(self))


def settings_of(section) -> dict:
    """A method's settings for train.json: every field but the switches, with the LoRA rank; a non-finite number
    (a PPO entry's max_kl: .inf) as its text, so that the file stays strict JSON."""
    skip = ("algorithm", "enabled", "checkpoint_every", "lora")
    out = {k: v for k, v in dataclasses.asdict(section).items() if k not in skip}
    out = {k: str(v) if isinstance(v, float) and not math.isfinite(v) else v for k, v in out.items()}
    return {**out, "lora_r": section.lora.r} if hasattr(section, "lora") else out


def train_args() -> argparse.Namespace:
    """The command line of every training script (dvc.yaml's train@NAME template): each reads what its algorithm
    needs."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--method", required=True, help="the methods entry of params.yaml to train")
    parser.add_argument("--data", required=True, help="the prepare stage's DatasetDict")
    parser.add_argument("--reference", required=True, help="the reference stage's samples of the starting policy")
    parser.add_argument("--sft", required=True, help="the sft stage's output (used when policy.adapter is sft)")
    parser.add_argument("--out", required=True, help="the adapter folder")
    parser.add_argument("--live", required=True, help="DVCLive folder for the per-step curves and train.json")
    parser.add_argument("--checkpoints", required=True, help="resumable state, outside DVC outputs")
    return parser.parse_args()


def begin(algorithm: str) -> tuple[argparse.Namespace, object, Method, bool]:
    """(command line, params, the methods entry --method names, whether it is off: placeholders written) for the
    training script of `algorithm`."""
    args, params = train_args(), load_params()
    found = {m.name: m for m in methods_of(params) if m.trains_weights}
    if args.method not in found:
        raise PipelineError(f"--method {args.method}: params.yaml has no such methods entry (it has "
                            f"{', '.join(found)}); run the stages dvc.yaml makes of params.yaml (dvc repro)")
    method = found[args.method]
    if method.algorithm.name != algorithm:
        raise PipelineError(f"methods.{method.name}.algorithm is {method.algorithm.name}, but this is the {algorithm} "
                            f"script; run stages/{method.algorithm.name}.py (dvc repro train@{method.name})")
    return args, params, method, skip(method, args.out, args.live)


def skip(method: Method, out: str, live: str) -> bool:
    """True (placeholders written by the main process) when `method` is off in params.yaml."""
    if method.enabled:
        return False
    if is_main():
        write_placeholder(out, f"The method {method.name} ({method.algorithm.label}) is off (methods.{method.name}"
                               ".enabled is false): no adapter was trained.\n")
        with atomic_dir(live) as tmp:
            for curve in method.algorithm.curves:  # header only: `dvc plots show` accepts it
                write_text(tmp / f"plots/metrics/{curve}.tsv", f"step\t{curve.rsplit('/', 1)[1]}\n")
            TrainRecord(method.name, method.algorithm.name, enabled=False).write(tmp / "train.json")
        log.info("methods.%s.enabled is false: wrote placeholders %s and %s", method.name, out, live)
    return True


@dataclasses.dataclass
class Outputs:
    """Where the main process writes: the DVCLive logger and the two temporary folders that replace --live and
    --out when training ends."""
    live: object
    live_dir: Path
    out_dir: Path


@contextlib.contextmanager
def outputs(out: str, live: str):
    """Both outputs of a training stage, whole when the block ends without error, else neither: an Outputs on the
    main process, None on the others (they write nothing)."""
    if not is_main():
        yield None
        return
    from dvclive import Live

    with atomic_dir(live) as live_dir, atomic_dir(out) as out_dir:
        yield Outputs(Live(str(live_dir), dvcyaml=False, save_dvc_exp=False), live_dir, out_dir)


def log_row(live, row: dict):
    """One step's values to DVCLive (`step` is the x axis)."""
    live.step = row["step"]
    for key, value in row.items():
        if key != "step":
            live.log_metric(key, value)
