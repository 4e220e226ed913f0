"""Resumable training state for the online methods (PPO, GRPO): what a checkpoint must match, and reading it.

A checkpoint lives outside DVC outputs (--checkpoints). It holds the step, the logged history, the trainable
weights and the optimizer (and whatever else an engine's state_dict adds), with the inputs it was made from,
part by part, so a mismatch is named in the log. Nothing here knows TRL: each engine saves and loads its own
state; this module decides whether a saved one may be resumed, and when one is saved (`checkpoint_step`: every
`checkpoint_every` steps, and at the step boundary after a SIGTERM, before the stage stops).
"""
from __future__ import annotations

import dataclasses
import logging
import math
import os
import shutil
from pathlib import Path
from typing import Callable, Optional

import torch

from .errors import PipelineError
from .io import Stopped, fingerprint, stop_asked, stop_reason, wait_for_step
from .manifest import identity, model_manifest, read_cache
from .parallel import any_process
from .models import resolve_device, resolve_dtype

log = logging.getLogger("detox.checkpoint")

# Settings that do not change the steps a run takes, only how many or whether they are saved: a checkpoint
# made under other values still resumes. Step t's batch, rollout lengths and seeds come from (seed, t) alone.
NOT_IN_FINGERPRINT = ("max_steps", "checkpoint_every")
KEYS = {"step", "history", "fingerprint", "weights", "optimizer"}  # every engine's checkpoint has these


def resumable_inputs(raw: dict, sections: tuple[str, ...], method: str) -> dict:
    """The settings a checkpoint must share with this run to resume it: `sections` of params.yaml, the methods entry
    `method` less NOT_IN_FINGERPRINT (so a renamed copy of an entry resumes nothing of the original's: another
    folder)."""
    inputs = {k: raw[k] for k in ("seed", *sections)}
    inputs["method"] = {k: v for k, v in raw["methods"][method].items() if k not in NOT_IN_FINGERPRINT}
    return inputs


def checkpoint_inputs(params, data: str, adapter, sections: tuple[str, ...], method: str,
                      reference: Optional[str] = None) -> dict:
    """What a checkpoint must share with this run to resume it, part by part, so that a mismatch is named:
    the settings, the prepared data, the starting adapter, the policy's and the reward model's content (new
    weights in the same folder count: the lineage manifests, hashes cached by size and mtime) and the
    arithmetic (device and dtype as resolved here, compiled generation; compute.threads changes no number); the
    reference samples too, for a method whose reward reads them (`reference`)."""
    cache = read_cache()
    device = resolve_device(params.compute)
    compute = {"device": device.type, "dtype": str(resolve_dtype(params.compute, device)),
               "compile_generation": params.compute.compile_generation and device.type == "cuda"}  # CPU: ignored
    return {"settings": fingerprint(resumable_inputs(params.raw, sections, method), []),
            "prepared data": fingerprint({}, [data]),
            "starting adapter": fingerprint({}, [adapter]),
            "policy model": identity(model_manifest("policy.model", params.policy.model, params.policy.revision,
                                                    cache)),
            "reward model": identity(model_manifest("reward.model", params.reward.model, params.reward.revision,
                                                    cache)),
            "compute": fingerprint(compute, []),
            **({"reference samples": fingerprint({}, [reference])} if reference else {})}


@dataclasses.dataclass
class Resume:
    """Where training continues: the checkpoint folder, the inputs it must match (by part), steps done and their
    rows."""
    dir: Path
    inputs: dict
    start: int = 0
    history: list = dataclasses.field(default_factory=list)


def save_checkpoint(path: Path, step: int, history: list[dict], inputs: dict, state: dict):
    """Everything needed to continue after `step` steps (`state`: the engine's state_dict), with the inputs it was
    made from; written to a temp file, then renamed."""
    path.mkdir(parents=True, exist_ok=True)
    tmp = path / "state.pt.tmp"
    torch.save({"step": step, "history": history, "fingerprint": fingerprint(inputs, []), "inputs": inputs, **state},
               tmp)
    os.replace(tmp, path / "state.pt")


def checkpoint_step(engine, resume: Resume, done: int, every: int, max_steps: int):
    """Called by a training loop after each step (`done` steps so far): the main process saves a checkpoint every
    `every` steps (0: never), none at `max_steps` (the outputs follow). After a SIGTERM (the `dvc` that started the
    stage ended: io.run_stage) it saves one now and stops the stage, writing no output; from the first call on
    (before its save), a SIGTERM waits for a step boundary (before it, there is nothing to save: the stage stops)."""
    wait_for_step()  # first: a SIGTERM during the save below waits for it (no half-written state.pt.tmp)
    stop = any_process(stop_asked())  # every process stops at the same step boundary
    if engine.is_main and every and done < max_steps and (stop or done % every == 0):
        save_checkpoint(resume.dir, done, resume.history, resume.inputs, engine.state_dict())
    if stop:
        kept = f"a checkpoint at step {done} is in {resume.dir}" if every and done < max_steps else \
            f"the last checkpoint in {resume.dir} (if any) is kept"
        raise Stopped(f"{stop_reason()} after step {done} of "
                      f"{max_steps}: {kept}; no output written. `dvc repro` resumes from it")


def read_checkpoint(path: Path, inputs: Callable[[], dict], max_steps: int, key: str) -> Optional[dict]:
    """The checkpoint in `path` if it was made with the same `inputs()` (a dict of part: fingerprint, computed
    only when there is a readable checkpoint to compare) and is below `max_steps` (the setting `key`); None to
    start from step 0. (`max_steps` is not an input: a run cut short resumes under a new max_steps.)

    Called before any model loads. A checkpoint of other inputs is removed, with a log line that names the
    parts that differ; an unreadable or incomplete one is set aside as state.pt.unreadable (one log line; it
    is never loaded unsafely).
    """
    if path.exists() and not path.is_dir():
        raise PipelineError(f"the checkpoint folder {path} is a file; remove it (or give --checkpoints a folder)")
    file = path / "state.pt"
    if not file.exists():
        return None
    try:
        state = torch.load(file, map_location="cpu", weights_only=True)
        if not isinstance(state, dict) or not KEYS <= set(state):
            raise ValueError("incomplete")
    except Exception as err:  # corrupt, truncated, foreign: never worth blocking every later run
        os.replace(file, path / "state.pt.unreadable")
        log.warning("checkpoint %s is unreadable (%s); set aside as state.pt.unreadable, starting from step 0",
                    file, type(err).__name__)
        return None
    now = inputs()
    if state["fingerprint"] != fingerprint(now, []):
        made = state.get("inputs") or {}
        changed = [k for k in now if made.get(k) != now[k]] if made else ["(not recorded)"]
        log.warning("checkpoint in %s (step %d) was made from other inputs: %s changed since; discarding it and "
                    "starting from step 0", path, state["step"], ", ".join(changed))
        shutil.rmtree(path, ignore_errors=True)
        return None
    if state["step"] >= max_steps:  # the state at step max_steps is gone: it cannot be recovered from a later one
        log.info("checkpoint in %s is at step %d, not below %s %d; starting from step 0", path,
                 state["step"], key, max_steps)
        shutil.rmtree(path, ignore_errors=True)
        return None
    return state


def restore_checkpoint(engine, state: Optional[dict], path: Path) -> tuple[int, list]:
    """(steps done, history) after loading `state` into the engine; (0, []) if there is none or it does not fit."""
    if state is None:
        return 0, []
    try:
        engine.load_state_dict(state)
    except (ValueError, KeyError, RuntimeError) as err:
        log.warning(
            "checkpoint in %s does not fit this model (%s); set aside, starting from step 0", path,
            str(err).splitlines()[0][:200])
        if (path / "state.pt").exists():
            os.replace(path / "state.pt", path / "state.pt.unreadable")
        return 0, []
    return state["step"], state["history"]


def check_finite(values: dict, step: int, checkpoint_dir: Path, every: int, method: str, fix: str):
    bad = [k for k, v in values.items() if not math.isfinite(v)]
    if bad:
        kept = every and (checkpoint_dir / "state.pt").is_file()
        note = (f"The last good checkpoint is kept in {checkpoint_dir}; a rerun resumes from it." if kept else
                "No checkpoint had been written yet, so a rerun starts from step 0.")
        raise PipelineError(
            f"{method} step {step}: {', '.join(bad)} is not finite (nan/inf); training stopped. {note} "
            f"{fix}, then rerun `dvc repro`"
        )
