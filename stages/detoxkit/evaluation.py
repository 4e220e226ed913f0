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

SAMPLE_COLUMNS = ["index", "sample", "prompt", "reference", "response", "toxicity", "reward",
                  "rouge1", "rouge2", "rougeL", "length", "kl", "perplexity"]


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


def reference_stats(model, tokenizer, queries, responses, batch_size, device) -> tuple[np.ndarray, np.ndarray]:
    """Per sample: (mean per-token log-ratio log p_policy - log p_reference, perplexity under the reference).

    The reference is the starting policy: the same model with its PPO adapter disabled, or the model
    itself when it has no adapter (then the log-ratio is 0). The log-ratio's expectation is
    KL(policy || reference); the perplexity exp(-mean log p_reference) is the fluency measure of the
    detox literature (DExperts, Quark), taken from the same reference log-probs.
    """
    if hasattr(model, "disable_adapter"):
        policy_lp = response_logprobs(model, tokenizer, queries, responses, batch_size, device)
        with model.disable_adapter():
            ref_lp = response_logprobs(model, tokenizer, queries, responses, batch_size, device)
    else:
        ref_lp = response_logprobs(model, tokenizer, queries, responses, batch_size, device)
        policy_lp = ref_lp
    kl = np.array([float((p - r).mean()) if len(p) else 0.0 for p, r in zip(policy_lp, ref_lp)])
    perplexity = np.array([float(torch.exp(-r.mean())) if len(r) else 1.0 for r in ref_lp])
    return kl, perplexity


def distinct_n(texts: list[str], n: int) -> float:
    """Unique n-grams / all n-grams of whitespace words, over all responses together (distinct-n)."""
    grams = [tuple(words[i:i + n]) for words in (t.split() for t in texts) for i in range(len(words) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 0.0


def evaluate_policy(model, tokenizer, scorer, rows, ev, seed: int, device, compile_generation=False,
                    **gen_kwargs) -> list[dict]:
    """Generate `ev.samples_per_prompt` responses per row (consecutively, from one seed), then score, ROUGE,
    length, KL and perplexity each; one record a sample, `index` naming its prompt and `sample` which of its k.

    With one sample per prompt this draws exactly what a single pass over the rows does.
    """
    k = ev.samples_per_prompt
    order = [i for i in range(len(rows)) for _ in range(k)]
    if k > 1:
        rows = rows.select(order)
    ids, texts = generate_texts(model, tokenizer, rows, ev.batch_size, device, seed, "evaluate", compile_generation,
                                max_new_tokens=ev.max_new_tokens, **gen_kwargs)
    prompts = list(rows["query"])
    rewards, toxicity = scorer.score(prompts, texts)
    scores = rouge(texts, list(rows["summary"]))
    kl, perplexity = reference_stats(model, tokenizer, list(rows["input_ids"]), ids, ev.batch_size, device)
    stops = stop_ids(model, tokenizer)
    return [
        {"index": order[i], "sample": i % k, "prompt": prompts[i], "reference": rows["summary"][i],
         "response": texts[i], "toxicity": float(toxicity[i]), "reward": float(rewards[i]),
         "rouge1": float(scores["rouge1"][i]), "rouge2": float(scores["rouge2"][i]),
         "rougeL": float(scores["rougeL"][i]), "length": response_length(ids[i], tokenizer, stops), "kl": float(kl[i]),
         "perplexity": float(perplexity[i])}
        for i in range(len(texts))
    ]


MEANS = ("toxicity", "reward", "rouge1", "rouge2", "rougeL", "length", "kl", "perplexity")


def per_prompt(records: list[dict], threshold: float) -> dict[str, np.ndarray]:
    """One value per prompt (in the order of their first sample), each prompt's k samples kept together:
    the mean of each sampled metric, the highest toxicity of the k, and whether any reaches `threshold`.
    Resampling these rows resamples prompts, as the paired bootstrap must."""
    groups: dict[int, list[dict]] = {}
    for r in records:
        groups.setdefault(int(r["index"]), []).append(r)
    out = {k: np.array([np.mean([float(r[k]) for r in g]) for g in groups.values()]) for k in MEANS}
    worst = np.array([max(float(r["toxicity"]) for r in g) for g in groups.values()])
    out["max_toxicity"] = worst  # its mean is the expected maximum toxicity (RealToxicityPrompts)
    out["toxic_any"] = (worst >= threshold).astype(float)  # its mean is the toxicity probability
    return out


def summarize(records: list[dict], threshold: float) -> dict:
    """The metrics file: means over all samples (std for toxicity/reward), the detox literature's
    per-prompt toxicity metrics over k samples, fluency (perplexity) and diversity (distinct-n)."""
    col = {k: np.array([float(r[k]) for r in records]) for k in MEANS}
    prompts = per_prompt(records, threshold)
    texts = [r["response"] for r in records]
    return {
        "num_samples": len(records),
        "num_prompts": len(prompts["toxicity"]),
        "samples_per_prompt": len(records) // max(1, len(prompts["toxicity"])),
        "toxicity_mean": float(col["toxicity"].mean()),
        "toxicity_std": float(col["toxicity"].std()),
        "expected_max_toxicity": float(prompts["max_toxicity"].mean()),
        "toxicity_probability": float(prompts["toxic_any"].mean()),  # share of prompts with a sample >= threshold
        "toxic_threshold": threshold,
        "reward_mean": float(col["reward"].mean()),
        "reward_std": float(col["reward"].std()),
        "rouge1": float(col["rouge1"].mean()),
        "rouge2": float(col["rouge2"].mean()),
        "rougeL": float(col["rougeL"].mean()),
        "length_mean": float(col["length"].mean()),
        "kl_mean": float(col["kl"].mean()),
        "perplexity_mean": float(col["perplexity"].mean()),  # under the starting policy
        **{f"distinct_{n}": distinct_n(texts, n) for n in (1, 2, 3)},
    }
