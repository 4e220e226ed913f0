"""Reward and toxicity from one pass of the hate-speech classifier.

reward   = raw logit of the not-hate label (what PPO maximises, as in the lab)
toxicity = softmax probability of the hate label (what `evaluate`'s toxicity measurement reports)
Both labels are looked up by name (label_ids), never by position. The classifier loads under the
policy's rules (models.py): safetensors unless allowed otherwise, never remote code.
A scorer of another form, `python:MODULE:FUNCTION` (python_scorer.py), serves as the reward or a judge
behind the same two methods: `score(prompts, responses)` and `toxicity(responses)`.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np
import torch

from . import python_scorer
from .python_scorer import join
from .settings import ComputeSettings, RewardSettings
from .errors import PipelineError
from .hub import is_local
from .io import read_json
from .models import from_pretrained_safely, load_config, load_tokenizer, resolve_device, resolve_dtype


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


@torch.inference_mode()
def classifier_logits(model, tokenizer, ids: list[list[int]], batch_size: int, device) -> torch.Tensor:
    """float32 logits (samples x labels) of token-id lists, padded and run in batches."""
    out = []
    for start in range(0, len(ids), batch_size):
        batch = tokenizer.pad({"input_ids": ids[start:start + batch_size]}, return_tensors="pt")
        out.append(model(**batch.to(device)).logits.float().cpu())
    return torch.cat(out) if out else torch.zeros(0, model.config.num_labels)


class RewardScorer:
    def __init__(self, model, tokenizer, label_ids: tuple[int, int], device, batch_size: int,
                 include_prompt: bool, max_length: int):
        self.model, self.tokenizer, self.device = model, tokenizer, device
        self.not_hate_id, self.hate_id = label_ids
        self.batch_size, self.include_prompt, self.max_length = batch_size, include_prompt, max_length

    def score(self, prompts: list[str], responses: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """(rewards, toxicities) for each (prompt, response), in batches."""
        ids = encode_for_classifier(self.tokenizer, prompts, responses, self.include_prompt, self.max_length)
        logits = classifier_logits(self.model, self.tokenizer, ids, self.batch_size, self.device)
        return logits[:, self.not_hate_id].numpy(), torch.softmax(logits, dim=-1)[:, self.hate_id].numpy()


def lookup_labels(config, names, owner: str, fix: str) -> list[int]:
    """Label ids by name from config.label2id (never by position); a missing one names the labels there are."""
    label2id = {str(k): int(v) for k, v in (getattr(config, "label2id", None) or {}).items()}
    missing = [name for name in names if name not in label2id]
    if missing:
        raise PipelineError(f"{owner} has no label {missing[0]!r}; its labels are {sorted(label2id)}. {fix}")
    return [label2id[name] for name in names]


def label_ids(config, not_hate_label: str, hate_label: str) -> tuple[int, int]:
    """Look the reward and toxicity labels up by name; a wrong index would reward toxicity."""
    return tuple(lookup_labels(config, (not_hate_label, hate_label), "the reward classifier",
                               "Set reward.not_hate_label / reward.hate_label to the names it uses, or pick a "
                               "hate-speech classifier"))


def reward_max_length(config, tokenizer) -> int:
    """Longest input the classifier accepts (RoBERTa reserves 2 positions for its padding offset)."""
    limit = tokenizer.model_max_length if tokenizer.model_max_length < 1_000_000 else 10**9
    max_pos = getattr(config, "max_position_embeddings", None)
    if max_pos:
        offset = 2 if "roberta" in getattr(config, "model_type", "") else 0
        limit = min(limit, max_pos - offset)
    return limit


def check_classifier(key: str, ref: str, config):
    """Refuse a model that is not a sequence classifier, before its weights load."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES

    archs = config.architectures or []
    if archs and not any(a.endswith("ForSequenceClassification") for a in archs) or (
        not archs and config.model_type not in MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES
    ):
        what = archs[0] if archs else config.model_type
        raise PipelineError(f"{key} {ref} is a {what}, not a sequence classifier (…ForSequenceClassification)")


def load_classifier(key: str, ref: str, revision, allow_pickle: bool, compute: ComputeSettings):
    """A sequence classifier under the policy's rules (safetensors unless allowed, never remote code)."""
    from transformers import AutoModelForSequenceClassification

    device = resolve_device(compute)
    tokenizer = load_tokenizer(key, ref, revision)
    model = from_pretrained_safely(AutoModelForSequenceClassification, key, ref, revision, allow_pickle,
                                   key.rsplit(".", 1)[0], dtype=resolve_dtype(compute, device))
    model.to(device).eval()
    return model, tokenizer, device


def reward_label_ids(reward: RewardSettings) -> tuple[int, int]:
    """(not_hate_id, hate_id) from the reward model's config, checked before any weights load."""
    config = load_config("reward.model", reward.model, reward.revision)
    check_classifier("reward.model", reward.model, config)
    return label_ids(config, reward.not_hate_label, reward.hate_label)


def load_reward(reward: RewardSettings, compute: ComputeSettings):
    """Classifier, tokenizer, (not_hate_id, hate_id), device. Labels are checked before weights load."""
    ids = reward_label_ids(reward)
    model, tokenizer, device = load_classifier("reward.model", reward.model, reward.revision, reward.allow_pickle,
                                               compute)
    return model, tokenizer, ids, device


def build_scorer(reward_settings, compute):
    """The reward: a classifier (RewardScorer), or a Python scorer whose P(toxic) gives the log-odds reward."""
    if python_scorer.is_python(reward_settings.model):
        return python_scorer.PythonScorer("reward.model", reward_settings.model, reward_settings.batch_size,
                                          reward_settings.include_prompt)
    model, tokenizer, ids, device = load_reward(reward_settings, compute)
    return RewardScorer(model, tokenizer, ids, device, reward_settings.batch_size, reward_settings.include_prompt,
                        reward_max_length(model.config, tokenizer))


class Judge:
    """An independent toxicity classifier: the probability of its toxic label for each response alone.

    Softmax over the labels, or the label's sigmoid for a multi-label classifier (problem_type
    multi_label_classification, as Jigsaw-style models with toxic/obscene/insult heads are).
    """

    def __init__(self, name, model, tokenizer, toxic_id: int, device, batch_size: int):
        self.name, self.model, self.tokenizer, self.device = name, model, tokenizer, device
        self.toxic_id, self.batch_size = toxic_id, batch_size
        self.max_length = reward_max_length(model.config, tokenizer)
        self.multi_label = getattr(model.config, "problem_type", None) == "multi_label_classification"

    def toxicity(self, responses: list[str]) -> np.ndarray:
        ids = encode_for_classifier(self.tokenizer, responses, responses, False, self.max_length)
        logits = classifier_logits(self.model, self.tokenizer, ids, self.batch_size, self.device)
        probs = torch.sigmoid(logits) if self.multi_label else torch.softmax(logits, dim=-1)
        return probs[:, self.toxic_id].numpy()


def judge_label_ids(judges) -> list:
    """Each classifier judge's toxic label id, from its config: checked (a classifier, with that label) before
    weights load; None for a Python scorer, which returns P(toxic) itself."""
    ids = []
    for i, judge in enumerate(judges):
        key = f"evaluation.judges[{i}].model"
        if python_scorer.is_python(judge.model):
            ids.append(None)
            continue
        config = load_config(key, judge.model, judge.revision)
        check_classifier(key, judge.model, config)
        ids += lookup_labels(config, [judge.toxic_label], f"the judge {judge.model}",
                             f"Set evaluation.judges[{i}].toxic_label to the name of its toxic label")
    return ids


def build_judges(judges, compute: ComputeSettings, batch_size: int) -> list:
    """Every judge, ready to score: a classifier (Judge) or a Python scorer, both with .name and .toxicity()."""
    out = []
    for i, (judge, toxic_id) in enumerate(zip(judges, judge_label_ids(judges))):
        key = f"evaluation.judges[{i}].model"
        if toxic_id is None:
            out.append(python_scorer.PythonScorer(key, judge.model, batch_size))
            continue
        model, tokenizer, device = load_classifier(key, judge.model, judge.revision, judge.allow_pickle, compute)
        out.append(Judge(judge.name, model, tokenizer, toxic_id, device, batch_size))
    return out


def _identity(key: str, ref: str):
    """What makes two scorer settings the same scorer: a Python scorer's file and function, a local folder's
    resolved path, a Hub id (whatever its revision)."""
    if python_scorer.is_python(ref):
        return python_scorer.identity(key, ref)
    return str(Path(ref).expanduser().resolve()) if is_local(ref) else ref


def check_scorers(reward: RewardSettings, judges, manifests: Optional[Path] = None):
    """Everything about the reward and the judges that can be checked before any weights load: a classifier's
    config and labels (by name); a Python scorer imported and called once on two probe texts; and no judge that
    is the reward scorer itself (it could never disagree with it, so judge_disagrees could never be set): not
    the same id or path, nor, in the lineage stage's `manifests` folder, the same content or Hub commit."""
    if python_scorer.is_python(reward.model):
        python_scorer.probe("reward.model", reward.model)
    else:
        reward_label_ids(reward)
    judge_label_ids(judges)
    for i, judge in enumerate(judges):
        if python_scorer.is_python(judge.model):
            python_scorer.probe(f"evaluation.judges[{i}].model", judge.model)
        if _identity("evaluation.judges", judge.model) == _identity("reward.model", reward.model):
            raise PipelineError(
                f"evaluation.judges[{i}].model {judge.model} is the reward scorer itself (reward.model "
                f"{reward.model}): it can never disagree with the reward, so judge_disagrees could never be set. "
                "Judge with another classifier or scorer, or set evaluation.judges: []")
    if manifests is not None:
        _same_content(reward, judges, Path(manifests))


def _same_content(reward: RewardSettings, judges, manifests: Path):
    """A judge whose lineage manifest matches the reward model's: the same sha256 of a local folder's files (a
    copy elsewhere), or the same commit of a Hub repository (another id for it). Manifests of other settings
    (lineage not rerun yet) are not compared; the id and path checks still hold."""
    files = manifests / "reward.json", manifests / "judges.json"
    if not all(f.is_file() for f in files):
        return
    mine, theirs = read_json(files[0]), read_json(files[1])
    if mine.get("model") != reward.model or mine.get("kind") not in ("local", "hub") or \
            str(mine.get("resolved", "unresolved")).startswith("unresolved"):
        return
    for i, judge in enumerate(judges):
        entry = theirs.get(judge.name) or {}
        if entry.get("model") == judge.model and entry.get("kind") == mine["kind"] and \
                entry.get("resolved") == mine["resolved"]:
            what = "files (the same sha256)" if mine["kind"] == "local" else f"Hub commit ({mine['resolved']})"
            raise PipelineError(
                f"evaluation.judges[{i}].model {judge.model} has the same {what} as reward.model {reward.model}, "
                f"as {files[1]} and {files[0]} record: it is the reward model itself and can never disagree with "
                "it, so judge_disagrees could never be set. Judge with another classifier, or set "
                "evaluation.judges: []")
