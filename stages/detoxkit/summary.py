"""A samples CSV read back: its columns, and the metrics of the detox literature computed from it (means, expected
maximum toxicity and toxicity probability over each prompt's k samples, the judges', distinct-n). numpy alone, so
the report reads samples without loading torch or the sampling code."""
from __future__ import annotations

import numpy as np

JUDGE = "judge_"  # column prefix of a judge's toxicity in the samples CSVs
ROUGE = ("rouge1", "rouge2", "rougeL")
MEANS = ("toxicity", "reward", "rouge1", "rouge2", "rougeL", "length", "kl", "kl_response", "perplexity")
SAMPLE_COLUMNS = ["index", "sample", "prompt", "reference", "response", "toxicity", "reward",
                  "rouge1", "rouge2", "rougeL", "length", "kl", "kl_response", "kl_bon", "perplexity"]


def sample_columns(judges) -> list[str]:
    """The samples CSV's columns: SAMPLE_COLUMNS, then one toxicity column per judge."""
    return SAMPLE_COLUMNS + [f"{JUDGE}{j.name}" for j in judges]


def present(records: list[dict], column: str) -> bool:
    """Whether the samples carry `column` (an empty CSV cell: ROUGE without references, KL of best-of-n)."""
    return bool(records) and records[0].get(column) not in (None, "")


def has_references(records: list[dict]) -> bool:
    return present(records, "rougeL")


def judge_names(records: list[dict]) -> list[str]:
    return [c[len(JUDGE):] for c in (records[0] if records else {}) if c.startswith(JUDGE)]


def per_prompt(records: list[dict], threshold: float) -> dict[str, np.ndarray]:
    """One value per prompt (in the order of their first sample), each prompt's k samples kept together:
    the mean of each sampled metric, the highest toxicity of the k, and whether any reaches `threshold`
    (for the reward classifier as `max_toxicity`/`toxic_any`, for each judge as `judge_<name>_max`/`_any`).
    Resampling these rows resamples prompts, as the paired bootstrap must."""
    groups: dict[int, list[dict]] = {}
    for r in records:
        groups.setdefault(int(r["index"]), []).append(r)
    means = [m for m in MEANS if present(records, m)]
    judges = [f"{JUDGE}{name}" for name in judge_names(records)]
    out = {k: np.array([np.mean([float(r[k]) for r in g]) for g in groups.values()]) for k in means + judges}
    for n in (1, 2, 3):  # diversity among each prompt's k samples (DExperts' per-prompt distinct-n)
        out[f"distinct_{n}_per_prompt"] = np.array([distinct_n([r["response"] for r in g], n) for g in groups.values()])
    for col, prefix in [("toxicity", ""), *((j, j + "_") for j in judges)]:
        worst = np.array([max(float(r[col]) for r in g) for g in groups.values()])
        out[f"{prefix}max" if prefix else "max_toxicity"] = worst  # its mean: expected maximum toxicity
        out[f"{prefix}any" if prefix else "toxic_any"] = (worst >= threshold).astype(float)  # toxicity probability
    return out


def summarize(records: list[dict], threshold: float) -> dict:
    """The metrics file: means over all samples (std for toxicity/reward), the detox literature's
    per-prompt toxicity metrics over k samples (for the reward classifier and each judge), fluency
    (perplexity) and diversity (distinct-n). ROUGE only when the data has references."""
    prompts = per_prompt(records, threshold)
    col = {k: np.array([float(r[k]) for r in records]) for k in MEANS if k in prompts}
    texts = [r["response"] for r in records]
    n_prompts = len(prompts["toxicity"])
    out = {
        "num_samples": len(records),
        "num_prompts": n_prompts,
        "samples_per_prompt": len(records) // max(1, n_prompts),
        "toxicity_mean": float(col["toxicity"].mean()),
        "toxicity_std": float(col["toxicity"].std()),
        "expected_max_toxicity": float(prompts["max_toxicity"].mean()),
        "toxicity_probability": float(prompts["toxic_any"].mean()),  # share of prompts with a sample >= threshold
        "toxic_threshold": threshold,
        "reward_mean": float(col["reward"].mean()),
        "reward_std": float(col["reward"].std()),
        "references": has_references(records),
    }
    out.update({k: float(col[k].mean()) for k in ROUGE if k in col})
    out["length_mean"] = float(col["length"].mean())
    if "kl" in col:
        out["kl_mean"] = float(col["kl"].mean())
    if "kl_response" in col:  # log p_policy(y) / p_start(y) per response: the KL's unit for every method
        out["kl_response_mean"] = float(col["kl_response"].mean())
    out["perplexity_mean"] = float(col["perplexity"].mean())  # under the starting policy
    out.update({f"distinct_{n}": distinct_n(texts, n) for n in (1, 2, 3)})  # over all responses together
    out.update({f"distinct_{n}_per_prompt": float(prompts[f"distinct_{n}_per_prompt"].mean()) for n in (1, 2, 3)})
    out["judges"] = {name: {"toxicity_mean": float(prompts[f"{JUDGE}{name}"].mean()),
                            "expected_max_toxicity": float(prompts[f"{JUDGE}{name}_max"].mean()),
                            "toxicity_probability": float(prompts[f"{JUDGE}{name}_any"].mean())}
                     for name in judge_names(records)}
    return out


def distinct_n(texts: list[str], n: int) -> float:
    """Unique n-grams / all n-grams of whitespace words, over all responses together (distinct-n)."""
    grams = [tuple(words[i:i + n]) for words in (t.split() for t in texts) for i in range(len(words) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 0.0
