"""The GRPO engine: group-relative policy optimization of a LoRA adapter, on the pipeline's own generation and
log-probs (detoxkit.generation). No TRL: 0.11.4 has no GRPO.

A step: the stage hands it each prompt `group_size` times (consecutively) with the responses it sampled and their
rewards; the engine takes the group advantages, the log-probs before the update (the "old" policy) and under the
reference (the same model with the adapter disabled: the starting policy, as PPO's reference), then `epochs`
passes of optimizer steps over minibatches of `mini_batch_size` responses. Under torchrun each process steps on
its own prompts and the gradients are averaged over processes before every optimizer step (all-reduce), so every
process holds the same weights; the stage writes from the main process only.

GRPO's arithmetic (Shao et al. 2024, DeepSeekMath) is here too, as plain tensor functions (group_advantages,
grpo_loss, k3_kl) for seq2seq and causal policies alike: TRL 0.11.4 has no GRPO, and the TRL that has one is
decoder-only and cannot be installed beside the pin.

- For each prompt, `group_size` responses; each response's advantage is its reward minus its group's mean,
  divided by the group's standard deviation (Bessel-corrected, as torch.std and TRL compute it) plus `eps`;
  with `scale_rewards` false the division is dropped (Dr. GRPO, Liu et al. 2025). A group whose rewards are all
  equal has advantage 0 for every response: it teaches the policy nothing (only the KL term acts on it).
- Per token, the PPO-style clipped surrogate min(ρ A, clip(ρ, 1 − ε, 1 + ε) A) with ρ = exp(log π − log π_old),
  minus β times the k3 estimate of KL(π ‖ π_ref): exp(log π_ref − log π) − (log π_ref − log π) − 1, which is
  ≥ 0 and 0 exactly where the two agree (so 0 at step 0, the reference being the starting policy).
- The loss is the negative of that, averaged over each response's tokens, then over the responses (the
  original GRPO's sequence-level mean).
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from .settings import GenerationSettings, GRPOSettings, PolicySettings
from .errors import PipelineError
from .generation import batch_logprobs, decode, generate, is_causal, sampling_kwargs, stop_ids
from .models import save_detoxified
from .parallel import world

log = logging.getLogger("detox.grpo")
ZERO_STD = 1e-6  # a group whose rewards' std is below this is all ties: its advantages are 0
LOGGED = ("grpo/loss", "grpo/kl", "grpo/clip_fraction", "grpo/advantage_std", "grpo/reward_std",
          "grpo/zero_std_share", "grpo/grad_norm", "tokens/responses_len_mean")


def group_advantages(rewards: torch.Tensor, group_size: int, scale_rewards: bool = True,
                     eps: float = 1e-4) -> torch.Tensor:
    """Advantages of `rewards` (consecutive groups of `group_size` responses to one prompt), one per response."""
    if rewards.numel() % group_size:
        raise ValueError(f"{rewards.numel()} rewards do not split into groups of {group_size}")
    grouped = rewards.reshape(-1, group_size).to(torch.float64)
    centred = grouped - grouped.mean(dim=1, keepdim=True)
    if scale_rewards:
        centred = centred / (grouped.std(dim=1, keepdim=True) + eps)
    return centred.reshape(-1).to(rewards.dtype)


def k3_kl(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """Per-token k3 estimate of KL(policy ‖ reference) from log-probs of the policy's own samples."""
    delta = ref_logp - logp
    return torch.exp(delta) - delta - 1


def grpo_loss(logp: torch.Tensor, old_logp: torch.Tensor, ref_logp: torch.Tensor, advantages: torch.Tensor,
              mask: torch.Tensor, clip: float, beta: float) -> tuple[torch.Tensor, dict]:
    """The GRPO loss of a batch of responses: `logp`, `old_logp`, `ref_logp` and `mask` are [responses, tokens]
    (padding masked out), `advantages` one per response. Returns (loss, statistics): the mean per-token KL and
    the share of tokens whose ratio was clipped."""
    mask = mask.to(logp.dtype)
    ratio = torch.exp(logp - old_logp)
    adv = advantages.to(logp.dtype).unsqueeze(1)
    unclipped, clipped = ratio * adv, torch.clamp(ratio, 1 - clip, 1 + clip) * adv
    kl = k3_kl(logp, ref_logp)
    per_token = -(torch.minimum(unclipped, clipped) - beta * kl)
    lengths = mask.sum(dim=1).clamp(min=1)
    loss = ((per_token * mask).sum(dim=1) / lengths).mean()
    tokens = mask.sum().clamp(min=1)
    was_clipped = (clipped < unclipped).to(logp.dtype)  # the min took the clipped side
    with torch.no_grad():
        stats = {"kl": float((kl * mask).sum() / tokens), "clip_fraction": float((was_clipped * mask).sum() / tokens)}
    return loss, stats

class GRPOEngine:
    """GRPO on a PEFT policy (seq2seq or causal), LoRA weights only, no value head."""

    def __init__(self, peft_model, tokenizer, grpo: GRPOSettings, generation: GenerationSettings, device,
                 static: Optional[tuple[int, int]] = None):
        self.model, self.tokenizer, self.settings, self.generation = peft_model, tokenizer, grpo, generation
        self.device, self.static = device, static
        self.causal = is_causal(peft_model)
        self.rank, self.world = world()
        self._stops = stop_ids(peft_model, tokenizer)
        self._params = [p for p in peft_model.parameters() if p.requires_grad]
        if self.world > 1:  # every process starts from rank 0's adapter (they are seeded alike; this makes sure)
            for p in self._params:
                torch.distributed.broadcast(p.data, 0)
        self.optimizer = torch.optim.AdamW(self._params, lr=grpo.learning_rate, weight_decay=0.0)
        self.model.eval()  # no dropout (grpo.lora.dropout is 0 and the base model's is off): exact ratios and KL

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def parameter_counts(self) -> tuple[int, int]:
        params = list(self.model.parameters())
        return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)

    # --- the loop's three calls -------------------------------------------------------------------
    def generate(self, queries: list[list[int]], max_new_tokens: int) -> list[list[int]]:
        """Responses of the current policy (new tokens only, cut after the first stop token)."""
        return generate(self.model, self.tokenizer, queries, self.generation.batch_size, self.device, self.static,
                        max_new_tokens=max_new_tokens, **sampling_kwargs(self.generation))

    def decode(self, responses: list[list[int]]) -> list[str]:
        return decode(self.tokenizer, responses, self._stops)

    def step(self, queries: list[list[int]], responses: list[list[int]], rewards) -> dict:
        """One GRPO step on consecutive groups of `group_size` responses; returns the step's scalar statistics
        (loss, KL and clip fraction are means over its optimizer steps)."""
        g, mb = self.settings.group_size, self.settings.mini_batch_size
        rewards = torch.as_tensor(np.asarray(rewards, dtype=np.float64))
        advantages = group_advantages(rewards, g, self.settings.scale_rewards)
        group_std = rewards.reshape(-1, g).std(dim=1)
        slices = [slice(i, i + mb) for i in range(0, len(responses), mb)]
        with torch.no_grad():  # the policy that sampled the responses, and the reference
            old = [batch_logprobs(self.model, self.tokenizer, queries[s], responses[s], self.device)[0] for s in slices]
            with self.model.disable_adapter():
                ref = [batch_logprobs(self.model, self.tokenizer, queries[s], responses[s], self.device)[0]
                       for s in slices]
        totals = {"loss": [], "kl": [], "clip_fraction": [], "grad_norm": []}
        for _ in range(self.settings.epochs):
            for s, old_lp, ref_lp in zip(slices, old, ref):
                logp, mask = batch_logprobs(self.model, self.tokenizer, queries[s], responses[s], self.device)
                loss, stats = grpo_loss(logp, old_lp, ref_lp, advantages[s].to(logp.device), mask,
                                        self.settings.clip, self.settings.beta)
                self.optimizer.zero_grad(set_to_none=False)
                loss.backward()
                self._average_gradients()
                norm = torch.nn.utils.clip_grad_norm_(self._params, self.settings.max_grad_norm)
                self.optimizer.step()
                for key, value in (("loss", loss.item()), ("kl", stats["kl"]),
                                   ("clip_fraction", stats["clip_fraction"]), ("grad_norm", float(norm))):
                    totals[key].append(value)
        lengths = [len(r) for r in responses]
        return {**{f"grpo/{k}": float(np.mean(v)) for k, v in totals.items()},
                "grpo/advantage_std": float(advantages.std()), "grpo/reward_std": float(group_std.mean()),
                "grpo/zero_std_share": float((group_std < ZERO_STD).double().mean()),
                "tokens/responses_len_mean": float(np.mean(lengths))}

    def _average_gradients(self):
        if self.world == 1:
            return
        for p in self._params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            torch.distributed.all_reduce(p.grad, op=torch.distributed.ReduceOp.SUM)
            p.grad /= self.world

    def check_in_sync(self):
        """Every process must hold the same adapter after training (the averaged gradients guarantee it); a
        difference would mean a process stepped on other gradients, so it stops the stage rather than save one."""
        if self.world == 1:
            return
        mine = torch.cat([p.detach().reshape(-1).double().cpu() for p in self._params])
        theirs = mine.clone()
        torch.distributed.broadcast(theirs, 0)
        same = torch.tensor([int(torch.equal(mine, theirs))])
        torch.distributed.all_reduce(same, op=torch.distributed.ReduceOp.MIN)
        if not same.item():
            raise PipelineError("the GRPO processes ended with different adapters (their gradients were not "
                                "averaged alike); rerun with compute.processes: 1 and report it")
        log.info("the %d processes hold the same adapter", self.world)

    # --- state and saving -------------------------------------------------------------------------------
    def trainable_state(self) -> dict[str, torch.Tensor]:
        return {n: p.detach().clone() for n, p in self.model.named_parameters() if p.requires_grad}

    def state_dict(self) -> dict:
        return {"weights": {k: v.cpu() for k, v in self.trainable_state().items()},
                "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: dict):
        """Restore a checkpoint's state; ValueError (and nothing changed) if it does not fit this model."""
        own = {n: p for n, p in self.model.named_parameters() if p.requires_grad}
        weights = state["weights"]
        if set(weights) != set(own) or any(weights[n].shape != own[n].shape for n in own):
            raise ValueError("its weights do not fit this policy's GRPO adapter")
        self.optimizer.load_state_dict(state["optimizer"])
        with torch.no_grad():
            for name, value in weights.items():
                own[name].copy_(value)

    def save(self, out_dir: Path, policy: PolicySettings, adapter: Optional[Path]):
        """The adapter and how to rebuild the starting policy, in the layout every trained method shares (no value head)."""
        save_detoxified(out_dir, self.model, None, policy, adapter)
