"""Batched, padded generation for evaluation, and per-token log-probabilities of given responses."""
from __future__ import annotations

import torch


def sampling_kwargs(gen) -> dict:
    """The lab's sampling settings (top_k=0 and top_p=1.0: sample from the full distribution)."""
    return {"min_length": gen.min_length, "top_k": gen.top_k, "top_p": gen.top_p, "do_sample": gen.do_sample}


def pad_queries(tokenizer, queries: list[list[int]], device):
    return tokenizer.pad({"input_ids": queries}, return_tensors="pt").to(device)


@torch.inference_mode()
def generate(model, tokenizer, queries: list[list[int]], batch_size: int, device, **gen_kwargs):
    """Responses as lists of token ids (decoder start token dropped, cut after the first EOS)."""
    out = []
    for start in range(0, len(queries), batch_size):
        batch = pad_queries(tokenizer, queries[start:start + batch_size], device)
        seqs = model.generate(**batch, pad_token_id=tokenizer.pad_token_id, **gen_kwargs)[:, 1:].cpu()
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
