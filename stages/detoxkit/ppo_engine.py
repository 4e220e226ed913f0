"""The PPO engine: the only module that knows TRL 0.11.4 (and the accelerate state it creates).

TRL 0.11.4 is the last release with the step-based `PPOTrainer` and `AutoModelForSeq2SeqLMWithValueHead`
(seq2seq PPO); it also has `AutoModelForCausalLMWithValueHead` for decoder-only policies. Later releases
moved PPO to a causal-only trainer and then removed it. Stages talk to `PPOEngine` only (generate,
decode, step, state, save, process rank), so the engine can be swapped without touching them.
"""
from __future__ import annotations

import contextlib
import copy
import logging
import warnings
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from .settings import GenerationSettings, PolicySettings, PPOSettings
from .generation import decode, decoder_start_id, generate, is_causal, sampling_kwargs, stop_ids
from .models import save_detoxified

log = logging.getLogger("detox.ppo")

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
    """PPO on a PEFT policy (seq2seq or causal) with a value head.

    The KL reference is the policy with its adapter disabled (no second copy in memory), unless
    `separate_reference` asks for a frozen copy (what the benchmark compares against).
    """

    def __init__(self, peft_model, tokenizer, ppo: PPOSettings, generation: GenerationSettings, seed: int,
                 cpu: bool = False, static: Optional[tuple[int, int]] = None, separate_reference: bool = False):
        from accelerate import PartialState
        from trl import AutoModelForCausalLMWithValueHead, AutoModelForSeq2SeqLMWithValueHead, PPOConfig, PPOTrainer

        # The process-wide state is created once, by whoever asks first (TRL's value-head loader does):
        # create it here so cpu=True is honoured and torchrun/accelerate can run data-parallel on CPUs.
        PartialState(cpu=cpu)
        self.causal = is_causal(peft_model)
        head_cls = AutoModelForCausalLMWithValueHead if self.causal else AutoModelForSeq2SeqLMWithValueHead
        torch.manual_seed(seed)  # the value head is initialised here: same seed, same head
        model = head_cls.from_pretrained(peft_model, is_trainable=True)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # deprecation notices and the "no dataset" hint: all expected here
            config = PPOConfig(
                model_name="policy", seed=seed, learning_rate=ppo.learning_rate, batch_size=ppo.batch_size,
                mini_batch_size=ppo.mini_batch_size, ppo_epochs=ppo.epochs, init_kl_coef=ppo.init_kl_coef,
                adap_kl_ctrl=ppo.adaptive_kl, target=ppo.target_kl, horizon=ppo.horizon, log_with=None,
                accelerator_kwargs={"cpu": cpu},  # cpu=True lets torchrun/accelerate run data-parallel on CPUs
            )
            self.trainer = PPOTrainer(config=config, model=model, ref_model=None, tokenizer=tokenizer)
        if separate_reference:  # a frozen full copy instead of the disabled adapter (more memory, same values)
            base = copy.deepcopy(peft_model.get_base_model())
            self.trainer.ref_model = head_cls.from_pretrained(base).to(self.device).eval()
            self.trainer.is_peft_model = False
            self.trainer.optional_peft_ctx = contextlib.nullcontext
        self.tokenizer = tokenizer
        self.generation = generation
        self.static = static  # (prompt length, new-token cap): compiled rollouts (generation.static_shape)
        self._accelerator = self.trainer.accelerator
        self._stops = stop_ids(peft_model, tokenizer)

    # --- processes: data-parallel runs (torchrun / accelerate launch) ----------------------------
    @property
    def is_main(self) -> bool:
        return self._accelerator.is_main_process

    @property
    def rank(self) -> int:
        return self._accelerator.process_index

    @property
    def world(self) -> int:
        return self._accelerator.num_processes

    @property
    def _unwrapped(self):
        return self._accelerator.unwrap_model(self.trainer.model)

    @property
    def policy(self):
        """The PEFT policy being trained (adapter on); `policy.disable_adapter()` gives the reference."""
        return self._unwrapped.pretrained_model

    @property
    def device(self):
        return self.trainer.current_device

    def parameter_counts(self) -> tuple[int, int]:
        """(trainable, total) parameters: the LoRA adapter and value head, of everything."""
        params = list(self._unwrapped.parameters())
        return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)

    # --- the PPO loop's three calls -------------------------------------------------------------
    def generate(self, queries: list[torch.Tensor], max_new_tokens: int) -> list[torch.Tensor]:
        """Batched rollouts in TRL's format: seq2seq responses begin with the decoder start token; causal
        responses are the new tokens only (TRL joins query and response itself). Both end at a stop token.

        Uses the pipeline's own batched generate() rather than TRL's, which cuts each response at the
        first EOS token and so breaks models whose decoder start token is EOS (BART, mBART).
        """
        model = self.policy
        self._unwrapped.eval()  # rollouts without LoRA dropout, like the log-probs TRL computes
        rows = generate(model, self.tokenizer, [q.tolist() for q in queries], self.generation.batch_size,
                        self.device, self.static, max_new_tokens=max_new_tokens, **sampling_kwargs(self.generation))
        prefix = [] if self.causal else [decoder_start_id(model)]
        return [torch.tensor([*prefix, *row], device=self.device) for row in rows]

    def decode(self, responses: list[torch.Tensor]) -> list[str]:
        """Response texts for the classifier (the decoder start and stop tokens dropped)."""
        rows = [r.tolist() for r in responses]
        if not self.causal:
            rows = [r[1:] for r in rows]
        return decode(self.tokenizer, rows, self._stops)

    def step(self, queries, responses, rewards) -> dict:
        scores = [torch.tensor(float(r)) for r in rewards]
        return scalar_stats(self.trainer.step(list(queries), list(responses), scores))

    def save(self, out_dir: Path, policy: PolicySettings, adapter: Optional[Path]):
        """The trained adapter, the value head and how to rebuild the starting policy (models.save_detoxified)."""
        save_detoxified(out_dir, self.policy, self._unwrapped.v_head, policy, adapter)

    # --- state: trainable weights, optimizer, KL controller -------------------------------------
    def trainable_state(self) -> dict[str, torch.Tensor]:
        return {n: p.detach().clone() for n, p in self._unwrapped.named_parameters() if p.requires_grad}

    def load_trainable_state(self, state: dict[str, torch.Tensor]):
        params = dict(self._unwrapped.named_parameters())
        with torch.no_grad():
            for name, value in state.items():
                params[name].copy_(value)

    def state_dict(self) -> dict:
        return {"weights": {k: v.cpu() for k, v in self.trainable_state().items()},
                "optimizer": self.trainer.optimizer.state_dict(),
                "kl_coef": float(self.trainer.kl_ctl.value)}

    def load_state_dict(self, state: dict):
        """Restore a checkpoint's state; ValueError (and nothing changed) if it does not fit this model."""
        own = {n: p for n, p in self._unwrapped.named_parameters() if p.requires_grad}
        weights = state["weights"]
        if set(weights) != set(own) or any(weights[n].shape != own[n].shape for n in own):
            raise ValueError("its weights do not fit this policy's adapter and value head")
        self.trainer.optimizer.load_state_dict(state["optimizer"])  # checks the parameter groups first
        self.load_trainable_state(weights)
        self.trainer.kl_ctl.value = float(state["kl_coef"])
