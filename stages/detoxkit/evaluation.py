"""Evaluation shared by the `baseline` and `evaluate` stages (and the sft ROUGE check).

Same test prompts, same sampling seed, same code: only the policy differs, so before/after are paired.
"""
from __future__ import annotations

import logging

import numpy as np
import torch
from tqdm.auto import tqdm

from .generation import decode, generate, response_length, response_logprobs, static_shape, stop_ids

log = logging.getLogger("detox.eval")

SAMPLE_COLUMNS = ["index", "prompt", "reference", "response", "toxicity", "reward",
                  "rouge1", "rouge2", "rougeL", "length", "kl"]


def rouge(predictions: list[str], references: list[str]) -> dict[str, np.ndarray]:
    """Per-sample ROUGE-1/2/L F-measures (rouge-score, stemmed), computed locally."""
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)
    scores = [scorer.score(ref, pred) for pred, ref in zip(predictions, references)]
    return {k: np.array([s[k].fmeasure for s in scores]) for k in ("rouge1", "rouge2", "rougeL")}


def generate_texts(model, tokenizer, rows, batch_size, device, seed, desc, compile_generation=False, **gen_kwargs):
    """Generate for `rows` in batches from one seed; returns (token ids, texts)."""
    torch.manual_seed(seed)
    ids = []
    queries = list(rows["input_ids"])
    static = static_shape(compile_generation, model, queries, gen_kwargs["max_new_tokens"])
    for start in tqdm(range(0, len(queries), batch_size), desc=desc, unit="batch"):
        ids += generate(model, tokenizer, queries[start:start + batch_size], batch_size, device, static,
                        **gen_kwargs)
    return ids, decode(tokenizer, ids, stop_ids(model, tokenizer))


def kl_to_reference(model, tokenizer, queries, responses, batch_size, device) -> np.ndarray:
    """Per-sample mean per-token log-ratio log p_policy - log p_reference on the policy's own samples.

    Its expectation is KL(policy || reference). The reference is the same model with its PPO adapter
    disabled; a model without an adapter is its own reference, so the KL is 0.
    """
    if not hasattr(model, "disable_adapter"):
        return np.zeros(len(responses))
    policy_lp = response_logprobs(model, tokenizer, queries, responses, batch_size, device)
    with model.disable_adapter():
        ref_lp = response_logprobs(model, tokenizer, queries, responses, batch_size, device)
    return np.array([float((p - r).mean()) if len(p) else 0.0 for p, r in zip(policy_lp, ref_lp)])


def evaluate_policy(model, tokenizer, scorer, rows, batch_size, device, seed, compile_generation=False,
                    **gen_kwargs) -> list[dict]:
    """Generate, score, ROUGE, length and KL for each row; one record a sample."""
    ids, texts = generate_texts(model, tokenizer, rows, batch_size, device, seed, "evaluate", compile_generation,
                                **gen_kwargs)
    prompts = list(rows["query"])
    rewards, toxicity = scorer.score(prompts, texts)
    scores = rouge(texts, list(rows["summary"]))
    kl = kl_to_reference(model, tokenizer, list(rows["input_ids"]), ids, batch_size, device)
    stops = stop_ids(model, tokenizer)
    return [
        {"index": i, "prompt": prompts[i], "reference": rows["summary"][i], "response": texts[i],
         "toxicity": float(toxicity[i]), "reward": float(rewards[i]),
         "rouge1": float(scores["rouge1"][i]), "rouge2": float(scores["rouge2"][i]),
         "rougeL": float(scores["rougeL"][i]), "length": response_length(ids[i], tokenizer, stops), "kl": float(kl[i])}
        for i in range(len(texts))
    ]


def summarize(records: list[dict]) -> dict:
    """The metrics file: means (and std for toxicity/reward) over the evaluated samples."""
    col = {k: np.array([float(r[k]) for r in records]) for k in ("toxicity", "reward", "rouge1", "rouge2",
                                                                  "rougeL", "length", "kl")}
    return {
        "num_samples": len(records),
        "toxicity_mean": float(col["toxicity"].mean()),
        "toxicity_std": float(col["toxicity"].std()),
        "reward_mean": float(col["reward"].mean()),
        "reward_std": float(col["reward"].std()),
        "rouge1": float(col["rouge1"].mean()),
        "rouge2": float(col["rouge2"].mean()),
        "rougeL": float(col["rougeL"].mean()),
        "length_mean": float(col["length"].mean()),
        "kl_mean": float(col["kl"].mean()),
    }
