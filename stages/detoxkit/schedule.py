"""Which prompts, rollout lengths and random streams a training step uses: from (seed, step, rank) alone.

PPO and GRPO share it, so step t of a run draws the same batch and noise whether the run went straight through
or was resumed from a checkpoint after a kill.
"""
from __future__ import annotations

import random

import numpy as np
import torch


def seed_step(seed: int, step: int, rank: int = 0):
    """Seed every generator from (seed, step, rank): sampling, LoRA dropout and TRL's minibatch order.

    Each data-parallel process gets its own stream, so ranks do not draw the same sampling noise and
    dropout masks for their different prompts; a single process (rank 0) is unaffected.
    """
    value = seed * 100_003 + step + rank * 1_000_000_007
    random.seed(value)
    np.random.seed(value % 2**32)
    torch.manual_seed(value)


def batch_indices(n: int, batch_size: int, step: int, seed: int, rank: int = 0, world: int = 1) -> np.ndarray:
    """Rows for `step` on process `rank`: a fresh permutation each epoch, the last partial batch dropped."""
    per_epoch = n // (batch_size * world)
    epoch, slot = divmod(step, per_epoch)
    perm = np.random.default_rng([seed, epoch]).permutation(n)
    start = (slot * world + rank) * batch_size
    return perm[start:start + batch_size]


def rollout_length(gen, seed: int, step: int) -> int:
    """max_new_tokens for this step's rollouts, drawn from [output_min_length, output_max_length)."""
    return int(np.random.default_rng([seed, step, 1]).integers(gen.output_min_length, gen.output_max_length))
