"""Data-parallel sampling and scoring: each process takes whole batches; the results are gathered in order.

A batch is the unit of work and of randomness. Batch b holds items [b * B, (b + 1) * B) of a list (the prompts,
each repeated for its k samples); it is seeded from (seed, its first item) and generated and scored as one batch
wherever it runs. One process and N processes therefore draw and score the same samples, byte for byte (at the
same compute.threads: a matmul split over another number of threads sums in another order). The processes
come from torchrun or accelerate launch (WORLD_SIZE, RANK, LOCAL_RANK); with one process nothing is set up.
torch is imported where a function needs it, so that a stage that is off (a placeholder) asks `is_main()` and
ends without loading it.
"""
from __future__ import annotations

import logging
import os
from typing import Callable

log = logging.getLogger("detox.parallel")


def world() -> tuple[int, int]:
    """(rank, world size) of this process: (0, 1) outside a launcher."""
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


def setup():
    """Join the launcher's process group (gloo on CPU, NCCL on GPUs, each process on its own GPU); nothing with
    one process."""
    rank, size = world()
    if size == 1:
        return
    import torch

    if not torch.distributed.is_available() or torch.distributed.is_initialized():
        return
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    torch.distributed.init_process_group("nccl" if cuda else "gloo")


def is_main() -> bool:
    return world()[0] == 0


def any_process(flag: bool) -> bool:
    """Whether `flag` is true on any process (an all-reduce; `flag` itself with one process), so that every process
    takes the same branch at the same step: a SIGTERM reaches the processes at slightly different moments, and a
    process that stopped a step before the others would leave them waiting in a collective forever."""
    if world()[1] == 1:
        return flag
    import torch

    dist = torch.distributed
    if not dist.is_available() or not dist.is_initialized():
        return flag
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
    value = torch.tensor([int(flag)], device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


def batch_seed(seed: int, first: int) -> int:
    """The seed of the batch that starts at item `first`: the same wherever the batch runs."""
    return seed * 1_000_003 + first


def share(n: int, batch_size: int, rank: int, size: int) -> list[int]:
    """The batch starts that process `rank` of `size` takes: a contiguous run of whole batches."""
    starts = list(range(0, n, batch_size))
    per, extra = divmod(len(starts), size)
    lo = rank * per + min(rank, extra)
    return starts[lo:lo + per + (rank < extra)]


def gather(items: list) -> list:
    """Every process's list, concatenated in rank order (so in item order, the shares being contiguous)."""
    rank, size = world()
    if size == 1:
        return items
    import torch

    parts = [None] * size
    torch.distributed.all_gather_object(parts, items)
    return [x for part in parts for x in part]


def map_batches(n: int, batch_size: int, seed: int, fn: Callable[[int, int], list], desc: str,
                per_prompt: int = 1) -> list:
    """fn(start, end) for every batch of n items, this process's share of them, each batch seeded from
    (seed, start) first; returns all processes' results in item order. `per_prompt` items make one prompt (for
    the log line that tells the split)."""
    import torch
    from tqdm.auto import tqdm

    rank, size = world()
    mine = share(n, batch_size, rank, size)
    if size > 1:
        span = (f"prompts {mine[0] // per_prompt}-{(min(mine[-1] + batch_size, n) - 1) // per_prompt}" if mine
                else "no prompts")
        log.info("process %d of %d: %s (%s: %d batches of %d)", rank, size, span, desc, len(mine), batch_size)
    out = []
    for start in tqdm(mine, desc=desc, unit="batch", disable=rank != 0):
        torch.manual_seed(batch_seed(seed, start))
        out += fn(start, min(start + batch_size, n))
    return gather(out)
