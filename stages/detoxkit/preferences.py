"""DPO's data: preference pairs from the starting policy's own samples (the `dpo_pairs` stage), and the check that
there are enough of them (`dpo_pairs`, then `dpo` before any model loads). No TRL here: the DPO engine trains on
the pairs."""
from __future__ import annotations

import numpy as np

from .errors import PipelineError
from .evaluation import Sampler, expand
from .settings import DPOSettings


def preference_pairs(sampler: Sampler, scorer, rows, dpo: DPOSettings) -> tuple[list[dict], dict]:
    """`dpo.n` responses for each row from the sampler (the evaluation's batched, and on CUDA compiled,
    generation), scored by the reward model, made into pairs (make_pairs). Returns (pairs, counts)."""
    candidates, _ = expand(rows, dpo.n)
    scored = sampler.scored(scorer, candidates, dpo.max_new_tokens, f"dpo pairs (n={dpo.n})", dpo.n)
    return make_pairs(rows, [t for _, t, _, _ in scored], [r for _, _, r, _ in scored], dpo.n, dpo.min_margin)


def make_pairs(rows, texts: list[str], rewards: list[float], n: int, min_margin: float) -> tuple[list[dict], dict]:
    """For each row, its n consecutive (text, reward): the highest-reward text chosen, the lowest rejected (among
    distinct texts), the pair kept when their reward gap is at least `min_margin` and above 0 (two equal responses
    teach nothing). Returns (pairs, counts)."""
    pairs, margins = [], []
    for i in range(len(rows)):
        # one reward per distinct text: the same text scored in two batches can differ in the last bits, and a
        # pair of one text twice teaches nothing
        scored_texts = dict(zip(texts[i * n:(i + 1) * n], rewards[i * n:(i + 1) * n]))
        chosen, rejected = max(scored_texts, key=scored_texts.get), min(scored_texts, key=scored_texts.get)
        gap = scored_texts[chosen] - scored_texts[rejected]
        margins.append(gap)
        if chosen != rejected and gap > 0 and gap >= min_margin:
            pairs.append({"index": i, "query": rows[i]["query"], "prompt_ids": list(rows[i]["input_ids"]),
                          "chosen": chosen, "rejected": rejected, "reward_chosen": scored_texts[chosen],
                          "reward_rejected": scored_texts[rejected], "margin": gap})
    counts = {"prompts": len(rows), "generated_samples": len(texts), "pairs": len(pairs),
              "margin_mean_all": float(np.mean(margins)) if margins else 0.0,
              "margin_mean_kept": float(np.mean([p["margin"] for p in pairs])) if pairs else None}
    return pairs, counts


def check_pairs(pairs: list[dict], dpo: DPOSettings, where: str):
    """Refuse too few pairs (before any model loads), naming the settings that make more."""
    if len(pairs) < max(dpo.min_pairs, 1):
        raise PipelineError(
            f"{where} gave {len(pairs)} preference pairs, fewer than dpo.min_pairs ({dpo.min_pairs}); lower "
            "dpo.min_margin, raise dpo.n or dpo.num_prompts, or lower dpo.min_pairs")
