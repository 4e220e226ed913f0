"""An online method's run (PPO, GRPO) around the loop the stage keeps in view (generate, score, step,
`run.log(row)`, `run.step_done(engine, step + 1)`): one trainer at a time in its folders, a killed run's temporaries
cleared, a checkpoint read before any model loads and restored into the engine, each step's row logged, a checkpoint
on the cadence (and at the step boundary after a SIGTERM), train.json and timing.json, the checkpoint removed once
the outputs hold the result.
"""
from __future__ import annotations

import contextlib
import functools
import logging
import shutil
import time
from pathlib import Path
from typing import Callable, Optional

from .checkpoint import Resume, checkpoint_inputs, checkpoint_step, read_checkpoint, restore_checkpoint
from .config import check_split_sizes
from .data import load_prepared
from .io import clear_stale, hold, write_json
from .methods import Method
from .generation import static_shape
from .models import attach_lora, check_lora_targets, check_policy_config, load_policy, peak_memory, start_adapter_path
from .parallel import world
from .schedule import seed_step
from .scoring import build_scorer
from .training import TrainRecord, begin, log_row, outputs, settings_of

log = logging.getLogger("detox.training")
SECTIONS = ("policy", "reward", "generation")  # besides seed and the method's own: what a checkpoint must share


class OnlineRun:
    """An online method's run (PPO, GRPO): made before any model loads (it reads the prepared data, checks the split
    sizes and the LoRA layers, holds the folders and reads the checkpoint, so a bad input costs nothing), then
    `session(make_engine)` around the loop (it loads the policy and makes the engine). `data`: the prepared splits;
    `adapter`: the starting adapter; `scorer`: the reward model, once loaded."""

    def __init__(self, method: Method, params, args, sections: tuple[str, ...] = SECTIONS):
        self.method, self.params, self.args = method, params, args
        self.settings, key = method.settings, f"methods.{method.name}"
        self.data = load_prepared(args.data)
        check_split_sizes(params, len(self.data["train"]), len(self.data["test"]), args.data,
                          keys=(f"{key}.batch_size",), world=world()[1])
        self.adapter = adapter = start_adapter_path(params.policy, args.sft)
        check_lora_targets(check_policy_config(params.policy), self.settings.lora, f"{key}.lora")  # before weights
        self.dir = Path(args.checkpoints)
        reads = getattr(self.settings, "reads_reference", False)  # the samples, not summary.json's wall time
        reference = str(Path(args.reference) / "samples.jsonl") if reads else None
        self.inputs = functools.cache(lambda: checkpoint_inputs(params, args.data, adapter, sections, method.name,
                                                                reference))
        hold(self.dir, args.out, args.live)  # one trainer at a time in these folders; a second is refused, named
        for folder in (args.live, args.out):  # temporaries a killed run left behind
            clear_stale(Path(folder))
        self.checkpoint = read_checkpoint(self.dir, self.inputs, self.settings.max_steps, f"{key}.max_steps")
        self.resume = self.out = None

    @classmethod
    def begin(cls, algorithm: str) -> Optional["OnlineRun"]:
        """The run of the stage's command line (--method: a methods entry of `algorithm`) and params.yaml; None when
        the entry is off (placeholders written)."""
        args, params, method, off = begin(algorithm)
        return None if off else cls(method, params, args)

    def load(self):
        """(policy with this method's fresh LoRA adapter, tokenizer, device, static cache shape), seeded from (seed, 0)
        first, so every process makes the same adapter (and PPO's value head, created next); the reward scorer is
        `self.scorer`."""
        params = self.params
        seed_step(params.seed, 0)
        self.scorer = build_scorer(params.reward, params.compute)
        model, tokenizer, device = load_policy(params.policy, params.compute, self.adapter)
        # rollout lengths are drawn from [min, max): one static cache for the longest
        static = static_shape(params.compute.compile_generation, model, self.data["train"]["input_ids"],
                              params.generation.output_max_length - 1)
        model = attach_lora(model, self.settings.lora, f"methods.{self.method.name}.lora")
        return model, tokenizer, device, static

    @contextlib.contextmanager
    def session(self, make_engine: Callable):
        """The policy loaded (load) and its engine made by `make_engine(model, tokenizer, device, static)`, the
        checkpoint restored into it, the logged history replayed into a fresh DVCLive folder; yields the engine (the
        loop reads `self.resume`: start step, history). Ends by `finish`; on a stop or an error no output is
        written."""
        model, tokenizer, self.device, static = self.load()
        self.engine = engine = make_engine(model, tokenizer, self.device, static)
        trainable, total = engine.parameter_counts()
        head = " + value head" if self.method.algorithm.value_head else ""
        log.info("trainable parameters (LoRA%s): %d of %d (%.2f%%)", head, trainable, total, 100 * trainable / total)
        self.resume = Resume(self.dir, self.inputs())
        self.resume.start, self.resume.history = restore_checkpoint(engine, self.checkpoint, self.dir)
        if self.resume.start:
            log.info("resuming from checkpoint at step %d of %d", self.resume.start, self.settings.max_steps)
        with outputs(self.args.out, self.args.live) as self.out:
            for row in self.resume.history:
                self.out and log_row(self.out.live, row)
            self.started = time.perf_counter()  # this run's wall time; a resumed run's earlier steps are not counted
            yield engine
        if engine.is_main:
            shutil.rmtree(self.dir, ignore_errors=True)  # finished: the outputs now hold the result

    def log(self, row: dict):
        """A finished step's row: kept for the checkpoint and train.json, and logged to DVCLive."""
        self.resume.history.append(row)
        if self.out:
            log_row(self.out.live, row)

    def step_done(self, engine, done: int):
        """After each step: a checkpoint every checkpoint_every steps; after a SIGTERM, one now, then the stage
        stops (detoxkit.checkpoint)."""
        checkpoint_step(engine, self.resume, done, self.settings.checkpoint_every, self.settings.max_steps)

    def finish(self, kl_key: str, reference_wall_s: float = 0.0, **fields):
        """The main process writes train.json (a TrainRecord of `fields`, with the entry, the parameter counts and the
        last step's means and `kl_key` filled in), timing.json (with `reference_wall_s`, the reference samples' time
        when the method trains on them, in its wall time as DPO's) and the adapter (the engine's save); both folders
        replace --live and --out as the session ends."""
        wall = time.perf_counter() - self.started + reference_wall_s
        if not self.out:
            return
        record = TrainRecord(self.method.name, self.method.algorithm.name, **fields)
        record.trainable_parameters, record.total_parameters = self.engine.parameter_counts()
        last = self.resume.history[-1] if self.resume.history else {}
        record.last_reward_mean, record.last_toxicity_mean = last.get("env/reward_mean"), last.get("env/toxicity_mean")
        record.last_kl, record.processes, record.settings = last.get(kl_key), world()[1], settings_of(self.settings)
        record.write(self.out.live_dir / "train.json")
        # wall time apart: train.json stays identical between a resumed run and an uninterrupted one
        write_json(self.out.live_dir / "timing.json", {"wall_s": wall, "resumed_at_step": self.resume.start,
                                                       **({"reference_wall_s": reference_wall_s}
                                                          if reference_wall_s else {}), **peak_memory(self.device)})
        self.out.live.end()
        self.engine.save(self.out.out_dir, self.params.policy, self.adapter)
        log.info("saved the %s adapter to %s after %d steps", self.method.label, self.args.out, record.steps_done)
