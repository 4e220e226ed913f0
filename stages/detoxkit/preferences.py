"""The reference samples (the `reference` stage: the starting policy's own responses to train prompts, scored once)
and what is made of them: DPO's preference pairs (`make_pairs`, in a DPO method's training stage) with the check
that there are enough, before any model loads; and the variational best-of-N reward (`vbon_reward`, for GRPO).
No TRL here: the DPO engine trains on the pairs."""
from __future__ import annotations

import json
from pathlib import Path

import math

import numpy as np

from .errors import PipelineError
from .evaluation import Sampler, expand
from .io import read_json
from .settings import DPOSettings, ReferenceSettings

SAMPLES, SUMMARY = "samples.jsonl", "summary.json"  # the reference stage's folder


def reference_samples(sampler: Sampler, scorer, rows, ref: ReferenceSettings, desc: str = "") -> list[dict]:
    """`ref.n` responses for each row from the sampler (the evaluation's batched, and on CUDA compiled, generation),
    scored by the reward model: one record a prompt (its train row, the prompt as the reward model reads it and as
    the policy's token ids, the responses, their rewards and toxicity)."""
    candidates, _ = expand(rows, ref.n)
    scored = sampler.scored(scorer, candidates, ref.max_new_tokens, desc or f"reference samples (n={ref.n})", ref.n)
    n = ref.n
    return [{"index": i, "query": rows[i]["query"], "prompt_ids": list(rows[i]["input_ids"]),
             "responses": [t for _, t, _, _ in scored[i * n:(i + 1) * n]],
             "rewards": [r for _, _, r, _ in scored[i * n:(i + 1) * n]],
             "toxicity": [x for _, _, _, x in scored[i * n:(i + 1) * n]]} for i in range(len(rows))]


def read_reference(folder: Path) -> tuple[list[dict], dict]:
    """(records, summary) of the reference stage's folder; a clear line when it is missing, off or damaged."""
    summary_file, file = folder / SUMMARY, folder / SAMPLES
    if not summary_file.is_file():
        raise PipelineError(f"{summary_file} not found; run the reference stage first (dvc repro reference)")
    summary = read_json(summary_file)  # a damaged file: one line naming it
    if not summary.get("enabled"):
        raise PipelineError(f"{folder} holds no samples (reference.num_prompts was 0 when it ran); set "
                            "reference.num_prompts and run `dvc repro`")
    try:
        records = [json.loads(line) for line in file.read_text(encoding="utf-8").splitlines() if line.strip()]
    except (OSError, ValueError):
        raise PipelineError(f"{file} is missing or damaged (not JSON lines); rebuild it with "
                            "`dvc repro -f reference`") from None
    return records, summary


def make_pairs(records: list[dict], min_margin: float) -> tuple[list[dict], dict]:
    """For each prompt's responses: the highest-reward text chosen, the lowest rejected (among distinct texts), the
    pair kept when their reward gap is at least `min_margin` and above 0 (two equal responses teach nothing).
    Returns (pairs, counts)."""
    pairs, margins = [], []
    for rec in records:
        # one reward per distinct text: the same text scored in two batches can differ in the last bits, and a
        # pair of one text twice teaches nothing
        scored_texts = dict(zip(rec["responses"], rec["rewards"]))
        chosen, rejected = max(scored_texts, key=scored_texts.get), min(scored_texts, key=scored_texts.get)
        gap = scored_texts[chosen] - scored_texts[rejected]
        margins.append(gap)
        if chosen != rejected and gap > 0 and gap >= min_margin:
            pairs.append({"index": rec["index"], "query": rec["query"], "prompt_ids": rec["prompt_ids"],
                          "chosen": chosen, "rejected": rejected, "reward_chosen": scored_texts[chosen],
                          "reward_rejected": scored_texts[rejected], "margin": gap})
    counts = {"prompts": len(records), "generated_samples": sum(len(r["responses"]) for r in records),
              "pairs": len(pairs), "margin_mean_all": float(np.mean(margins)) if margins else 0.0,
              "margin_mean_kept": float(np.mean([p["margin"] for p in pairs])) if pairs else None}
    return pairs, counts


def check_pairs(pairs: list[dict], dpo: DPOSettings, key: str, where: str):
    """Refuse too few pairs (before any model loads), naming the settings that make more (`key`: the entry's)."""
    if len(pairs) < max(dpo.min_pairs, 1):
        raise PipelineError(
            f"{where} gave {len(pairs)} preference pairs, fewer than {key}.min_pairs ({dpo.min_pairs}); lower "
            f"{key}.min_margin, raise reference.n or reference.num_prompts, or lower {key}.min_pairs")


NO_SPREAD = 1e-9  # reference rewards closer than this (relative to their size) are all one value


def vbon_reward(rewards, references) -> np.ndarray:
    """log F(r) for each reward r of one prompt's responses, F the smoothed empirical CDF of that prompt's reference
    rewards (the starting policy's own samples): F(r) = (#{ref < r} + #{ref = r} / 2 + 1/2) / (M + 1), in
    [1 / (2 (M + 1)), 1 - 1 / (2 (M + 1))], so the log is finite below and above every reference, and ties count half.
    It is the reward whose KL-regularised optimum with beta = 1 / (N - 1) is the best-of-N distribution (variational
    best-of-N, Amini et al. 2024). References with no spread rank nothing: every response gets log(1/2), the same value,
    so the prompt's group has no advantage (no signal, no NaN)."""
    refs = np.asarray(references, dtype=np.float64)
    r = np.asarray(rewards, dtype=np.float64)
    if refs.size == 0 or not np.all(np.isfinite(refs)):
        raise PipelineError(f"vbon_reward: the reference rewards must be finite and at least one (got {refs.tolist()})")
    if refs.max() - refs.min() <= NO_SPREAD * max(1.0, float(np.abs(refs).max())):
        return np.full(r.shape, math.log(0.5))
    below = (refs[None, :] < r[:, None]).sum(axis=1)
    equal = (refs[None, :] == r[:, None]).sum(axis=1)
    return np.log((below + 0.5 * equal + 0.5) / (refs.size + 1))


def reference_rewards(folder: Path, train_split) -> tuple[object, list[list[float]]]:
    """(the train prompts that have reference samples, their reference rewards in the same order): the reference
    stage sampled the first reference.num_prompts train prompts, each checked to be the prompt it was drawn for."""
    records, _ = read_reference(folder)
    if len(records) > len(train_split) or any(r["query"] != train_split[r["index"]]["query"] for r in records):
        raise PipelineError(f"{folder} holds samples of other prompts than this train split (the data changed since it "
                            "was drawn); rebuild it with `dvc repro reference`")
    return train_split.select([r["index"] for r in records]), [r["rewards"] for r in records]


def policy_samples(sampler: Sampler, scorer, records: list[dict], ref: ReferenceSettings, round_: int) -> list[dict]:
    """On-policy DPO: `ref.n` new responses for each of the reference samples' prompts from the policy `sampler`
    holds (trained so far), scored; records of the reference stage's shape, for make_pairs."""
    import datasets

    rows = datasets.Dataset.from_dict({"query": [r["query"] for r in records],
                                       "input_ids": [r["prompt_ids"] for r in records]})
    drawn = reference_samples(sampler, scorer, rows, ref, desc=f"DPO round {round_} samples (n={ref.n})")
    return [{**d, "index": r["index"]} for d, r in zip(drawn, records)]
