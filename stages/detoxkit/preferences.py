"""The reference samples (the `reference` stage: the starting policy's own responses to train prompts, scored once)
and what is made of them: DPO's preference pairs (`make_pairs`, in a DPO method's training stage) with the check
that there are enough, before any model loads; and the train prompts' reference rewards that GRPO's vBoN reward
ranks against (`stats.vbon_reward`). No TRL here: the DPO engine trains on the pairs."""
from __future__ import annotations

import json
from pathlib import Path

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


def reference_rewards(folder: Path, train_split) -> tuple[object, list[list[float]], dict]:
    """(the train prompts that have reference samples, their reference rewards in the same order, the reference
    stage's summary: its samples and wall time count in the method's cost): the reference stage sampled the first
    reference.num_prompts train prompts, each checked to be the prompt it was drawn for."""
    records, summary = read_reference(folder)
    if len(records) > len(train_split) or any(r["query"] != train_split[r["index"]]["query"] for r in records):
        raise PipelineError(f"{folder} holds samples of other prompts than this train split (the data changed since it "
                            "was drawn); rebuild it with `dvc repro reference`")
    return train_split.select([r["index"] for r in records]), [r["rewards"] for r in records], summary


def policy_samples(sampler: Sampler, scorer, records: list[dict], ref: ReferenceSettings, round_: int) -> list[dict]:
    """On-policy DPO: `ref.n` new responses for each of the reference samples' prompts from the policy `sampler`
    holds (trained so far), scored; records of the reference stage's shape, for make_pairs."""
    import datasets

    rows = datasets.Dataset.from_dict({"query": [r["query"] for r in records],
                                       "input_ids": [r["prompt_ids"] for r in records]})
    drawn = reference_samples(sampler, scorer, rows, ref, desc=f"DPO round {round_} samples (n={ref.n})")
    return [{**d, "index": r["index"]} for d, r in zip(drawn, records)]
