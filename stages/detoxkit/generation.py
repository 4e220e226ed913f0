"""Batched, padded generation for rollouts and evaluation, and per-token log-probabilities of responses.

Works for both kinds of policy. A seq2seq policy's response is its decoder output after the decoder
start token; a causal (decoder-only) policy's response is what follows the prompt, never the prompt:
prompts are left-padded so every row continues at the same position, and only the new tokens are kept.
A response ends at its first stop token (EOS, or any end-of-turn token the generation config lists).
"""
from __future__ import annotations

import logging
from typing import Optional

import torch

log = logging.getLogger("detox.generation")


def sampling_kwargs(gen) -> dict:
    """The lab's sampling settings (top_k=0 and top_p=1.0: sample from the full distribution)."""
    return {"min_length": gen.min_length, "top_k": gen.top_k, "top_p": gen.top_p, "do_sample": gen.do_sample}


def is_causal(model) -> bool:
    return not model.config.is_encoder_decoder


def stop_ids(model, tokenizer) -> list[int]:
    """Tokens that end a response: the tokenizer's EOS and every EOS the generation config lists
    (chat models end a turn with their own token, e.g. <|im_end|> or <|eot_id|>)."""
    listed = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids = {tokenizer.eos_token_id, *(listed if isinstance(listed, (list, tuple)) else [listed])}
    return sorted(i for i in ids if i is not None)


def pad_queries(tokenizer, queries: list[list[int]], device, length: Optional[int] = None, side: str = "right"):
    padding = {"padding": "max_length", "max_length": length} if length else {}
    return tokenizer.pad({"input_ids": queries}, return_tensors="pt", padding_side=side, **padding).to(device)


def static_shape(compile_generation: bool, model, queries: list[list[int]], max_new_tokens: int):
    """(prompt length, new-token cap) for compiled generation with a static KV cache, or None (eager).

    A compiled decoder step with CUDA graphs pays off only if its shapes never change: prompts are
    padded to the longest prompt of the run and the cache is sized for the longest response, so one
    compilation serves every batch. CUDA and seq2seq policies only (measured there:
    docs/performance.md); on a CPU compiling costs more than it saves.
    """
    if not compile_generation or model.device.type != "cuda":
        return None
    if is_causal(model):
        log.info("compiled generation is used for seq2seq policies only; sampling this causal policy eagerly")
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


def cut_at_stop(row: list[int], stops: list[int], pad_id: Optional[int]) -> list[int]:
    """The response up to and including its first stop token; trailing padding dropped if it has none."""
    for i, token in enumerate(row):
        if token in stops:
            return row[: i + 1]
    while row and row[-1] == pad_id:
        row = row[:-1]
    return row


@torch.inference_mode()
def generate(model, tokenizer, queries: list[list[int]], batch_size: int, device,
             static: Optional[tuple[int, int]] = None, **gen_kwargs):
    """Responses as lists of token ids: new tokens only, cut after the first stop token.

    `static` (from static_shape) compiles the decoder step: every batch is padded to the same prompt
    length and the same number of rows (the rows added to a short last batch are dropped again).
    `min_length` counts a seq2seq decoder's start token (the lab's min_length 5: at least 4 new tokens);
    a causal policy gets the same number of new tokens (generate() would count its prompt instead).
    """
    causal = is_causal(model)
    stops = stop_ids(model, tokenizer)
    kwargs = dict(gen_kwargs)
    if causal and "min_length" in kwargs:
        kwargs.setdefault("min_new_tokens", max(kwargs.pop("min_length") - 1, 0))
    out = []
    for start in range(0, len(queries), batch_size):
        chunk = queries[start:start + batch_size]
        step_kwargs = dict(kwargs)
        if static:
            rows = len(chunk)
            chunk = chunk + [chunk[0]] * (batch_size - rows)
            step_kwargs.update(_static_kwargs(static, step_kwargs.pop("max_new_tokens")))
        batch = pad_queries(tokenizer, chunk, device, static[0] if static else None, "left" if causal else "right")
        if stops:  # else the model's generation config decides (a tokenizer and config without any EOS)
            step_kwargs["eos_token_id"] = stops
        seqs = model.generate(**batch, pad_token_id=tokenizer.pad_token_id, **step_kwargs)
        seqs = seqs[:, batch["input_ids"].shape[1]:] if causal else seqs[:, 1:]
        if static:
            seqs = seqs[:rows]
        out.extend(cut_at_stop(row, stops, tokenizer.pad_token_id) for row in seqs.cpu().tolist())
    return out


def decode(tokenizer, responses, stops: list[int]) -> list[str]:
    """Response texts: special tokens skipped, and a final stop token dropped even if it is not special."""
    rows = [list(map(int, r)) for r in responses]
    return tokenizer.batch_decode([r[:-1] if r and r[-1] in stops else r for r in rows], skip_special_tokens=True)


def response_length(ids: list[int], tokenizer, stops: list[int]) -> int:
    """Tokens of content: the response without its stop token and padding."""
    return sum(1 for t in ids if t not in stops and t != tokenizer.pad_token_id)


def decoder_start_id(model) -> int:
    """The decoder start token: in the model config, else its generation config, else the pad token."""
    for cfg in (model.config, getattr(model, "generation_config", None)):
        value = getattr(cfg, "decoder_start_token_id", None)
        if value is not None:
            return value
    return model.config.pad_token_id


def _padded_responses(responses, fill: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(1, max(len(r) for r in responses))
    ids = torch.full((len(responses), width), fill, dtype=torch.long)
    mask = torch.zeros((len(responses), width), dtype=torch.long)
    for i, r in enumerate(responses):
        ids[i, : len(r)] = torch.tensor(r, dtype=torch.long)
        mask[i, : len(r)] = 1
    return ids, mask


def _response_logits(model, tokenizer, queries, resp, resp_mask, device) -> torch.Tensor:
    """Logits that predict each response token, shape (rows, longest response, vocabulary), for the
    responses padded by _padded_responses."""
    if not is_causal(model):
        enc = pad_queries(tokenizer, queries, device)
        decoder_in = torch.cat([torch.full((len(resp), 1), decoder_start_id(model)), resp[:, :-1]], dim=1)
        return model(**enc, decoder_input_ids=decoder_in.to(device)).logits
    # Left-padded prompts, then the responses: every response starts at the same column, positions
    # follow the attention mask (as in generate()), and only the logits over the responses are kept.
    enc = pad_queries(tokenizer, queries, device, side="left")
    ids = torch.cat([enc["input_ids"], resp.to(device)], dim=1)
    mask = torch.cat([enc["attention_mask"], resp_mask.to(device)], dim=1)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    logits = model(input_ids=ids, attention_mask=mask, position_ids=positions, logits_to_keep=resp.shape[1] + 1).logits
    return logits[:, :-1]


def batch_logprobs(model, tokenizer, queries, responses, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token log p(response token | prompt, previous tokens) of one batch, [responses, longest] in float32, and
    the mask of real (not padding) tokens; differentiable (GRPO trains through it)."""
    labels, mask = _padded_responses(responses, tokenizer.pad_token_id)
    logits = _response_logits(model, tokenizer, queries, labels, mask, device)
    logp = torch.log_softmax(logits.float(), dim=-1).gather(-1, labels.to(logits.device).unsqueeze(-1)).squeeze(-1)
    return logp, mask.to(logp.device)


@torch.inference_mode()
def response_logprobs(model, tokenizer, queries, responses, batch_size: int, device) -> list[torch.Tensor]:
    """Per-token log p(response token | prompt, previous tokens) under `model`, one tensor per sample."""
    out = []
    for start in range(0, len(queries), batch_size):
        resp = responses[start:start + batch_size]
        logp, _ = batch_logprobs(model, tokenizer, queries[start:start + batch_size], resp, device)
        out.extend(logp[i, : len(r)].cpu() for i, r in enumerate(resp))  # padding cut off
    return out
