"""Evaluation shared by the `baseline` and `evaluate` stages (and the sft ROUGE check).

Same test prompts, same sampling seed, same code: only the policy differs, so before/after are paired.
"""
from __future__ import annotations

import dataclasses
import logging

import numpy as np
import torch

from .generation import decode, generate, response_length, response_logprobs, static_shape, stop_ids
from .parallel import map_batches
from .stats import bon_kl
from .summary import JUDGE

log = logging.getLogger("detox.eval")


def rouge(predictions: list[str], references: list[str]) -> dict[str, np.ndarray]:
    """Per-sample ROUGE-1/2/L F-measures (rouge-score, stemmed), computed locally."""
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)
    scores = [scorer.score(ref, pred) for pred, ref in zip(predictions, references)]
    return {k: np.array([s[k].fmeasure for s in scores]) for k in ("rouge1", "rouge2", "rougeL")}


@dataclasses.dataclass(frozen=True)
class Sampler:
    """A policy and how it samples: batches of `batch_size` rows, each seeded from (seed, its first row) and taken by
    whichever data-parallel process (parallel.map_batches), on CUDA with a compiled decoder step when
    `compile_generation`; `kwargs`: generate()'s sampling settings (generation.sampling_kwargs)."""
    model: object
    tokenizer: object
    device: object
    seed: int
    batch_size: int
    compile_generation: bool = False
    kwargs: dict = dataclasses.field(default_factory=dict)

    def map(self, rows, max_new_tokens: int, desc: str, each, per_prompt: int = 1, **overrides) -> list:
        """each(start, end, token ids, texts) for every batch of `rows`' samples, in order, gathered."""
        queries = list(rows["input_ids"])
        static = static_shape(self.compile_generation, self.model, queries, max_new_tokens)
        stops = stop_ids(self.model, self.tokenizer)
        kwargs = {**self.kwargs, **overrides, "max_new_tokens": max_new_tokens}

        def batch(start, end):
            ids = generate(self.model, self.tokenizer, queries[start:end], self.batch_size, self.device, static,
                           **kwargs)
            return each(start, end, ids, decode(self.tokenizer, ids, stops))

        return map_batches(len(queries), self.batch_size, self.seed, batch, desc, per_prompt)

    def texts(self, rows, max_new_tokens: int, desc: str, **overrides) -> tuple[list, list[str]]:
        """(token ids, texts) of one response for each row, in order."""
        out = self.map(rows, max_new_tokens, desc, lambda start, end, ids, texts: list(zip(ids, texts)), **overrides)
        return [i for i, _ in out], [t for _, t in out]

    def scored(self, scorer, rows, max_new_tokens: int, desc: str, per_prompt: int = 1) -> list[tuple]:
        """(token ids, text, reward, toxicity) of one response for each row, each batch generated and scored as
        one."""
        prompts = list(rows["query"])

        def each(start, end, ids, texts):
            rewards, toxicity = scorer.score(prompts[start:end], texts)
            return list(zip(ids, texts, map(float, rewards), map(float, toxicity)))

        return self.map(rows, max_new_tokens, desc, each, per_prompt)


def reference_stats(model, tokenizer, queries, responses, batch_size, device) -> tuple[np.ndarray, ...]:
    """Per sample: (mean per-token log-ratio log p_policy - log p_reference, perplexity under the reference, and the
    log-ratio summed over the response's tokens: log p_policy(y) / p_reference(y), whose mean over the policy's own
    samples estimates KL(policy || reference) per response, the unit best-of-N's KL is known in).

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
    return kl, perplexity, np.array([float((p - r).sum()) for p, r in zip(policy_lp, ref_lp)])


def expand(rows, k: int):
    """Each row k times in a row (consecutive samples of one prompt); returns (rows, prompt index per sample)."""
    order = [i for i in range(len(rows)) for _ in range(k)]
    return (rows.select(order) if k > 1 else rows), order


def evaluate_policy(sampler: Sampler, scorer, rows, ev, judges=()) -> list[dict]:
    """Generate `ev.samples_per_prompt` responses per row (consecutively), then score each: reward and toxicity,
    the judges' toxicity, ROUGE (when the data has references), length, KL and perplexity; one record a sample,
    `index` naming its prompt and `sample` which of its k. Each batch of the sampler's batch size is generated and
    scored as one, seeded from (seed, its first sample), by whichever data-parallel process takes it.
    """
    k = ev.samples_per_prompt
    rows, order = expand(rows, k)

    def each(start, end, ids, texts):
        return sample_records(sampler, scorer, judges, rows.select(range(start, end)), order[start:end], k, ids, texts,
                              first=start)

    return sampler.map(rows, ev.max_new_tokens, "evaluate", each, per_prompt=k)


def best_of_n(sampler: Sampler, scorer, rows, ev, n: int, judges=()) -> list[dict]:
    """The rejection-sampling baseline: for each of the k samples of each prompt, n candidates from the sampler's
    policy (the starting policy, or a trained one), the highest-reward one kept; records like evaluate_policy's, with
    no per-token KL (no single policy sampled the kept responses), their `kl_response` (the sampler's log-ratio to the
    start on them) and `kl_bon`: best-of-n's KL to its sampler at the prompt (stats.bon_kl of its k x n candidates'
    rewards; log n - (n - 1) / n nats for a continuous reward).

    TRL's BestOfNSampler is not used: it generates one query at a time, decodes a causal model's prompt with
    its response, and needs a value-head model. This reuses the evaluation's batched (and, on CUDA, compiled)
    generation, so candidates are sampled exactly as the evaluated policies' responses are.
    """
    k = ev.samples_per_prompt
    candidates, _ = expand(rows, k * n)
    scored = sampler.scored(scorer, candidates, ev.max_new_tokens, f"best-of-{n}", k * n)
    rewards = np.array([r for _, _, r, _ in scored])
    best = rewards.reshape(-1, n).argmax(axis=1) + np.arange(0, len(scored), n)
    kept, order = expand(rows, k)
    chosen = [scored[i] for i in best]
    kl_bon = [bon_kl(prompt, n) for prompt in rewards.reshape(len(rows), k * n)]  # a prompt's candidates: P's rewards

    def batch(start, end):  # the kept samples' judges, ROUGE, length and perplexity: scoring only
        part = chosen[start:end]
        records = sample_records(sampler, scorer, judges, kept.select(range(start, end)), order[start:end], k,
                                 [c[0] for c in part], [c[1] for c in part],
                                 (np.array([c[2] for c in part]), np.array([c[3] for c in part])), kl=False,
                                 first=start)
        return [{**r, "kl_bon": kl_bon[r["index"]]} for r in records]

    return map_batches(len(chosen), sampler.batch_size, sampler.seed, batch, f"best-of-{n} scores", per_prompt=k)


def sample_records(sampler: Sampler, scorer, judges, rows, order, k, ids, texts, scored=None, kl=True,
                   first=0) -> list[dict]:
    """One record per generated sample (the samples from item `first` of the expanded rows on). `scored`:
    (rewards, toxicity) already computed; `kl` False leaves the per-token KL cell empty (best-of-n's responses are
    not its sampling policy's samples; their `kl_response`, the log-ratio of that policy to the start on the kept
    responses, is one part of best-of-N's KL: compare.kl_to_start)."""
    prompts = list(rows["query"])
    rewards, toxicity = scored if scored is not None else scorer.score(prompts, texts)
    references = list(rows["summary"]) if "summary" in rows.column_names else None  # None: a prompt-only dataset
    scores = rouge(texts, references) if references is not None else {}
    model, tokenizer = sampler.model, sampler.tokenizer
    ref_kl, perplexity, log_ratio = reference_stats(model, tokenizer, list(rows["input_ids"]), ids,
                                                    sampler.batch_size, sampler.device)
    judged = {f"{JUDGE}{j.name}": j.toxicity(texts) for j in judges}
    stops = stop_ids(model, tokenizer)
    return [
        {"index": order[i], "sample": (first + i) % k, "prompt": prompts[i],
         "reference": references[i] if references is not None else "", "response": texts[i],
         "toxicity": float(toxicity[i]), "reward": float(rewards[i]),
         **{name: float(v[i]) for name, v in scores.items()},
         "length": response_length(ids[i], tokenizer, stops), **({"kl": float(ref_kl[i])} if kl else {}),
         "kl_response": float(log_ratio[i]), "perplexity": float(perplexity[i]),
         **{name: float(v[i]) for name, v in judged.items()}}
        for i in range(len(texts))
    ]
