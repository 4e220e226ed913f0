"""Reward and toxicity from one pass of the hate-speech classifier.

reward   = raw logit of the not-hate label (what PPO maximises, as in the lab)
toxicity = softmax probability of the hate label (what `evaluate`'s toxicity measurement reports)
Both labels are looked up by name (models.label_ids), never by position.
"""
from __future__ import annotations

import numpy as np
import torch


def join(prompt: str, response: str) -> str:
    """Prompt and response as one text, the way the lab scores them."""
    return prompt + response if prompt.endswith((" ", "\n")) else prompt + " " + response


def encode_for_classifier(tokenizer, prompts, responses, include_prompt: bool, max_length: int) -> list[list[int]]:
    """Token ids per sample, never longer than `max_length`; the prompt is cut (from its start) first."""
    texts = [join(p, r) for p, r in zip(prompts, responses)] if include_prompt else list(responses)
    encoded = tokenizer(texts, add_special_tokens=True, truncation=False)["input_ids"]
    budget = max_length - tokenizer.num_special_tokens_to_add(pair=False)
    out = []
    for i, ids in enumerate(encoded):
        if len(ids) <= max_length:
            out.append(ids)
            continue
        r_ids = tokenizer(responses[i], add_special_tokens=False)["input_ids"][:budget]
        p_ids = []
        if include_prompt and len(r_ids) < budget:
            p_ids = tokenizer(join(prompts[i], ""), add_special_tokens=False)["input_ids"]
            p_ids = p_ids[len(p_ids) - (budget - len(r_ids)):]
        out.append(tokenizer.build_inputs_with_special_tokens(p_ids + r_ids))
    return out


class RewardScorer:
    def __init__(self, model, tokenizer, label_ids: tuple[int, int], device, batch_size: int,
                 include_prompt: bool, max_length: int):
        self.model, self.tokenizer, self.device = model, tokenizer, device
        self.not_hate_id, self.hate_id = label_ids
        self.batch_size, self.include_prompt, self.max_length = batch_size, include_prompt, max_length

    @torch.inference_mode()
    def score(self, prompts: list[str], responses: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """(rewards, toxicities) for each (prompt, response), in batches."""
        ids = encode_for_classifier(self.tokenizer, prompts, responses, self.include_prompt, self.max_length)
        rewards, toxicity = [], []
        for start in range(0, len(ids), self.batch_size):
            batch = self.tokenizer.pad({"input_ids": ids[start:start + self.batch_size]}, return_tensors="pt")
            logits = self.model(**batch.to(self.device)).logits.float()
            rewards.append(logits[:, self.not_hate_id].cpu())
            toxicity.append(torch.softmax(logits, dim=-1)[:, self.hate_id].cpu())
        if not ids:
            return np.zeros(0), np.zeros(0)
        return torch.cat(rewards).numpy(), torch.cat(toxicity).numpy()


def build_scorer(reward_settings, compute):
    from .models import load_reward, reward_max_length

    model, tokenizer, ids, device = load_reward(reward_settings, compute)
    return RewardScorer(model, tokenizer, ids, device, reward_settings.batch_size, reward_settings.include_prompt,
                        reward_max_length(model.config, tokenizer))
