"""GRPO's arithmetic (group-relative policy optimization; Shao et al. 2024, DeepSeekMath), on our own log-probs.

TRL 0.11.4 has no GRPO, and the TRL that has one is decoder-only and cannot be installed beside the pin, so these
are the method's formulas as plain tensor functions, for seq2seq and causal policies alike:

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

import torch


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
