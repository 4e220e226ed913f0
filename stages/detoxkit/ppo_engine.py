"""The PPO engine: the only module that knows TRL 0.11.4.

TRL 0.11.4 is the last release with the step-based `PPOTrainer` and `AutoModelForSeq2SeqLMWithValueHead`
(seq2seq PPO); later releases moved PPO to a causal-only trainer and then removed it. Keeping TRL behind
`PPOEngine` (generate / step / state) lets the engine be swapped without touching the stages.
"""
from __future__ import annotations

import math
import os
import warnings
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from .config import GenerationSettings, PipelineError, PPOSettings
from .generation import decoder_start_id, generate, sampling_kwargs

# Names of the per-step scalars we log; TRL also returns arrays (kl_dist, tokens/*_dist) we skip.
LOGGED = ("objective/kl", "objective/kl_coef", "objective/entropy", "ppo/returns/mean",
          "ppo/policy/advantages_mean", "ppo/mean_scores", "ppo/loss/total", "ppo/loss/policy",
          "ppo/loss/value", "ppo/policy/approxkl", "tokens/responses_len_mean")


def scalar_stats(stats: dict) -> dict:
    """Keep the scalar entries TRL returns; arrays (distributions) are not plottable per step."""
    out = {}
    for key, value in stats.items():
        arr = np.asarray(value)
        if arr.size == 1 and arr.dtype.kind in "fiu":
            out[key] = float(arr.reshape(()))
    return out


class PPOEngine:
    """PPO on a seq2seq PEFT policy with a value head; the reference is the policy with its adapter off."""

    def __init__(self, peft_model, tokenizer, ppo: PPOSettings, generation: GenerationSettings, seed: int,
                 cpu: bool = False, static: Optional[tuple[int, int]] = None):
        from accelerate import PartialState
        from trl import AutoModelForSeq2SeqLMWithValueHead, PPOConfig, PPOTrainer

        # The process-wide state is created once, by whoever asks first (TRL's value-head loader does):
        # create it here so cpu=True is honoured and torchrun/accelerate can run data-parallel on CPUs.
        PartialState(cpu=cpu)
        torch.manual_seed(seed)  # the value head is initialised here: same seed, same head
        model = AutoModelForSeq2SeqLMWithValueHead.from_pretrained(peft_model, is_trainable=True)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # deprecation notices and the "no dataset" hint: all expected here
            config = PPOConfig(
                model_name="policy", seed=seed, learning_rate=ppo.learning_rate, batch_size=ppo.batch_size,
                mini_batch_size=ppo.mini_batch_size, ppo_epochs=ppo.epochs, init_kl_coef=ppo.init_kl_coef,
                adap_kl_ctrl=ppo.adaptive_kl, target=ppo.target_kl, horizon=ppo.horizon, log_with=None,
                accelerator_kwargs={"cpu": cpu},  # cpu=True lets torchrun/accelerate run data-parallel on CPUs
            )
            self.trainer = PPOTrainer(config=config, model=model, ref_model=None, tokenizer=tokenizer)
        self.tokenizer = tokenizer
        self.generation = generation
        self.static = static  # (prompt length, new-token cap): compiled rollouts (generation.static_shape)
        self.accelerator = self.trainer.accelerator

    @property
    def unwrapped(self):
        return self.accelerator.unwrap_model(self.trainer.model)

    @property
    def device(self):
        return self.trainer.current_device

    def generate(self, queries: list[torch.Tensor], max_new_tokens: int) -> list[torch.Tensor]:
        """Batched rollouts in TRL's seq2seq format: decoder start token, then the tokens up to EOS.

        Uses the pipeline's own batched generate() rather than TRL's, which cuts each response at the
        first EOS token and so breaks models whose decoder start token is EOS (BART, mBART).
        """
        model = self.unwrapped
        model.eval()  # rollouts without LoRA dropout, like the log-probs TRL computes
        rows = generate(model, self.tokenizer, [q.tolist() for q in queries], self.generation.batch_size,
                        self.device, self.static, max_new_tokens=max_new_tokens, **sampling_kwargs(self.generation))
        start = decoder_start_id(model.pretrained_model)
        return [torch.tensor([start, *row], device=self.device) for row in rows]

    def step(self, queries, responses, rewards) -> dict:
        scores = [torch.tensor(float(r)) for r in rewards]
        return scalar_stats(self.trainer.step(list(queries), list(responses), scores))

    # --- state: trainable weights, optimizer, KL controller -------------------------------------
    def trainable_state(self) -> dict[str, torch.Tensor]:
        return {n: p.detach().clone() for n, p in self.unwrapped.named_parameters() if p.requires_grad}

    def load_trainable_state(self, state: dict[str, torch.Tensor]):
        params = dict(self.unwrapped.named_parameters())
        with torch.no_grad():
            for name, value in state.items():
                params[name].copy_(value)

    def state_dict(self) -> dict:
        return {"weights": {k: v.cpu() for k, v in self.trainable_state().items()},
                "optimizer": self.trainer.optimizer.state_dict(),
                "kl_coef": float(self.trainer.kl_ctl.value)}

    def load_state_dict(self, state: dict):
        self.load_trainable_state(state["weights"])
        self.trainer.optimizer.load_state_dict(state["optimizer"])
        self.trainer.kl_ctl.value = state["kl_coef"]

    def save_checkpoint(self, path: Path, step: int, history: list[dict], fingerprint: str):
        """Everything needed to continue after `step` steps; written to a temp file, then renamed."""
        path.mkdir(parents=True, exist_ok=True)
        tmp = path / "state.pt.tmp"
        torch.save({"step": step, "history": history, "fingerprint": fingerprint, **self.state_dict()}, tmp)
        os.replace(tmp, path / "state.pt")

    def load_checkpoint(self, path: Path, fingerprint: str):
        """(steps done, history) from a checkpoint made with the same inputs; (0, []) otherwise."""
        file = path / "state.pt"
        if not file.is_file():
            return 0, []
        state = torch.load(file, map_location="cpu", weights_only=True)
        if state.get("fingerprint") != fingerprint:
            return None
        self.load_state_dict(state)
        return state["step"], state["history"]


def check_finite(values: dict, step: int, checkpoint_note: str):
    bad = [k for k, v in values.items() if not math.isfinite(v)]
    if bad:
        raise PipelineError(
            f"PPO step {step}: {', '.join(bad)} is not finite (nan/inf); training stopped. {checkpoint_note} "
            "Lower ppo.learning_rate or raise ppo.init_kl_coef, then rerun `dvc repro`"
        )
