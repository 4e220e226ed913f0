"""Batched, padded generation for evaluation, and per-token log-probabilities of given responses."""
from __future__ import annotations

import logging
from typing import Optional

import torch

log = logging.getLogger("detox.generation")


def sampling_kwargs(gen) -> dict:
    """The lab's sampling settings (top_k=0 and top_p=1.0: sample from the full distribution)."""
    return {"min_length": gen.min_length, "top_k": gen.top_k, "top_p": gen.top_p, "do_sample": gen.do_sample}


def pad_queries(tokenizer, queries: list[list[int]], device, length: Optional[int] = None):
    padding = {"padding": "max_length", "max_length": length} if length else {}
    return tokenizer.pad({"input_ids": queries}, return_tensors="pt", **padding).to(device)


def static_shape(compile_generation: bool, model, queries: list[list[int]], max_new_tokens: int):
    """(prompt length, new-token cap) for compiled generation with a static KV cache, or None (eager).

    A compiled decoder step with CUDA graphs pays off only if its shapes never change: prompts are
    padded to the longest prompt of the run and the cache is sized for the longest response, so one
    compilation serves every batch. CUDA and encoder-decoder policies only; on a CPU compiling costs
    more than it saves.
    """
    if not compile_generation or model.device.type != "cuda" or not model.config.is_encoder_decoder:
        return None
    shape = max(len(q) for q in queries), max_new_tokens
    log.info("compiled generation: prompts padded to %d tokens, static KV cache for %d new tokens", *shape)
    return shape


def _static_kwargs(shape: tuple[int, int], max_new_tokens: int) -> dict:
    from transformers import StoppingCriteria, StoppingCriteriaList
    from transformers.generation import CompileConfig

    class StopAfter(StoppingCriteria):  # generate() refuses a second MaxLengthCriteria
        def __call__(self, input_ids, scores, **kwargs):
            done = input_ids.shape[1] >= 1 + max_new_tokens
            return torch.full((input_ids.shape[0],), done, dtype=torch.bool, device=input_ids.device)

    prompt_len, cap = shape
    if max_new_tokens > cap:
        raise ValueError(f"max_new_tokens {max_new_tokens} exceeds the static cache's {cap}")
    # The cache (and so the compiled graph) is sized for `cap` tokens; this batch stops after its own count.
    # Decoder ids start with the decoder start token, so the decoder holds 1 + new tokens.
    return {"max_new_tokens": cap, "cache_implementation": "static",
            "stopping_criteria": StoppingCriteriaList([StopAfter()]),
            "compile_config": CompileConfig(fullgraph=False, dynamic=False, mode="reduce-overhead")}


@torch.inference_mode()
def generate(model, tokenizer, queries: list[list[int]], batch_size: int, device,
             static: Optional[tuple[int, int]] = None, **gen_kwargs):
    """Responses as lists of token ids (decoder start token dropped, cut after the first EOS).

    `static` (from static_shape) compiles the decoder step: every batch is padded to the same prompt
    length and the same number of rows (the rows added to a short last batch are dropped again).
    """
    out = []
    for start in range(0, len(queries), batch_size):
        chunk = queries[start:start + batch_size]
        kwargs = dict(gen_kwargs)
        if static:
            rows = len(chunk)
            chunk = chunk + [chunk[0]] * (batch_size - rows)
            kwargs.update(_static_kwargs(static, kwargs.pop("max_new_tokens")))
        batch = pad_queries(tokenizer, chunk, device, static[0] if static else None)
        seqs = model.generate(**batch, pad_token_id=tokenizer.pad_token_id, **kwargs)[:, 1:].cpu()
        if static:
            seqs = seqs[:rows]
        for row in seqs.tolist():
            if tokenizer.eos_token_id in row:
                row = row[: row.index(tokenizer.eos_token_id) + 1]
            while row and row[-1] == tokenizer.pad_token_id:
                row.pop()
            out.append(row)
    return out


def response_length(ids: list[int], tokenizer) -> int:
    """Tokens of content: the response without EOS/padding."""
    return sum(1 for t in ids if t not in (tokenizer.eos_token_id, tokenizer.pad_token_id))


def decoder_start_id(model) -> int:
    """The decoder start token: in the model config, else its generation config, else the pad token."""
    for cfg in (model.config, getattr(model, "generation_config", None)):
        value = getattr(cfg, "decoder_start_token_id", None)
        if value is not None:
            return value
    return model.config.pad_token_id


@torch.inference_mode()
def response_logprobs(model, tokenizer, queries, responses, batch_size: int, device) -> list[torch.Tensor]:
    """Per-token log p(response token | prompt, previous tokens) under `model`, one tensor per sample."""
    start_id = decoder_start_id(model)
    out = []
    for start in range(0, len(queries), batch_size):
        enc = pad_queries(tokenizer, queries[start:start + batch_size], device)
        resp = responses[start:start + batch_size]
        width = max(1, max(len(r) for r in resp))
        labels = torch.full((len(resp), width), -100, dtype=torch.long)
        for i, r in enumerate(resp):
            labels[i, : len(r)] = torch.tensor(r, dtype=torch.long)
        decoder_in = torch.cat([torch.full((len(resp), 1), start_id), labels[:, :-1].clamp(min=0)], dim=1)
        logits = model(**enc, decoder_input_ids=decoder_in.to(device)).logits.float().cpu()
        logp = torch.log_softmax(logits, dim=-1).gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
        out.extend(logp[i, : len(r)] for i, r in enumerate(resp))
    return out
