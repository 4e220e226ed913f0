"""Typed, strict settings read from `params.yaml`.

`params.yaml` is the only place where values live: the dataclasses below declare names, types and
ranges but no defaults, so a missing, unknown or ill-typed key stops a stage with the key's name
before any model is loaded. Every stage validates the whole file (every section and the rules that
span sections), so a mistake in a later stage's settings stops the first stage, not the fifth.
Numbers must be finite (.nan/.inf are refused) except where a field says otherwise.
"""
from __future__ import annotations

import dataclasses
import logging
import math
import os
import string
import sys
import types
import typing
from pathlib import Path
from typing import Literal, Optional, Union

from ruamel.yaml import YAML, MappingNode, SequenceNode
from ruamel.yaml.constructor import DuplicateKeyError
from ruamel.yaml.error import MarkedYAMLError, YAMLError

from .errors import ParamsError, PipelineError
from .methods import METHODS, TRAINED, listed


PYTHON_SCORER = "python:"  # a scorer setting of the form python:MODULE:FUNCTION (python_scorer.py)
PROBABILITY_CLIP = 1e-4  # a Python scorer's P(toxic) is clipped to [1e-4, 1 - 1e-4] before the log-odds: +-9.21


def scorer_display_name(ref: str) -> str:
    """A Python scorer's short name for reports and sample columns: module (or .py file stem) and function."""
    module, _, function = ref[len(PYTHON_SCORER):].rpartition(":")
    return f"{Path(module).stem if module.endswith('.py') else module}.{function}"


@dataclasses.dataclass(frozen=True)
class DataSettings:
    source: str  # Hub dataset id, or a local .jsonl/.json/.csv/.parquet file or a folder of them
    revision: Optional[str]  # Hub commit or tag that pins the dataset; null for the default branch
    split: str  # which split of the source to read
    min_chars: int  # keep dialogues with min_chars < len(dialogue) <= max_chars
    max_chars: int
    test_size: float  # fraction of the kept dialogues held out for evaluation
    shuffle: bool  # shuffle before splitting (the lab does not)
    dialogue_column: str  # a dotted name reaches a nested field (RealToxicityPrompts: prompt.text)
    summary_column: Optional[str]  # reference summaries; null for a prompt-only dataset (no ROUGE, no sft)
    filter: Optional[str]  # a boolean column a row must have true to be kept (RealToxicityPrompts: challenging)
    max_prompt_tokens: int  # longer prompts are cut inside the dialogue; the template's text is kept

    def check(self):
        _require(self.min_chars >= 0, "data.min_chars", "must be >= 0")
        _require(self.max_chars > self.min_chars, "data.max_chars", "must be larger than data.min_chars")
        _require(0 < self.test_size < 1, "data.test_size", "must be between 0 and 1 (exclusive), e.g. 0.2")
        _require(self.max_prompt_tokens > 0, "data.max_prompt_tokens", "must be positive")
        for key in ("dialogue_column", "summary_column", "filter"):
            value = getattr(self, key)
            _require(value is None or value.strip() != "", f"data.{key}", "must name a column (or be null)")


@dataclasses.dataclass(frozen=True)
class PromptSettings:
    template: str  # must contain {dialogue}
    chat_template: bool  # send the filled template as one user turn through the tokenizer's chat template

    def check(self):
        _require("{dialogue}" in self.template, "prompt.template", "must contain the placeholder {dialogue}")
        fix = "use {dialogue} as the only placeholder and double any other braces: {{ }}"
        try:
            fields = [(name, spec, conv) for _, name, spec, conv in string.Formatter().parse(self.template)
                      if name is not None]
        except ValueError as err:
            raise ParamsError(f"params.yaml: prompt.template is not a valid format string ({err}); {fix}") from None
        for name, spec, conv in fields:  # str.format would also run {dialogue.__class__} or {0}
            if name != "dialogue" or spec or conv:
                shown = "{" + name + (f"!{conv}" if conv else "") + (f":{spec}" if spec else "") + "}"
                raise ParamsError(f"params.yaml: prompt.template has the field {shown}; {fix}")


@dataclasses.dataclass(frozen=True)
class PolicySettings:
    model: str  # Hub id or local folder of a seq2seq or causal (decoder-only) LM saved with save_pretrained
    revision: Optional[str]  # Hub commit/tag/branch; ignored for local folders
    adapter: Optional[str]  # "sft" (the sft stage's adapter), a PEFT LoRA adapter folder, or null
    allow_pickle: bool  # allow loading *.bin (pickle) weights; safetensors are used otherwise

    def check(self):
        _require(self.model.strip() != "", "policy.model", "must name a Hub id or a local folder")


@dataclasses.dataclass(frozen=True)
class RewardSettings:
    model: str  # Hub id or local folder of a sequence classifier, or python:MODULE:FUNCTION returning P(toxic)
    revision: Optional[str]
    not_hate_label: str  # label whose raw logit is the PPO reward (a classifier; ignored by a Python scorer)
    hate_label: str  # label whose probability is the toxicity (a classifier; ignored by a Python scorer)
    include_prompt: bool  # score prompt + response (the lab) or the response alone
    batch_size: int
    allow_pickle: bool

    def describe(self) -> str:
        """What the reward and the toxicity are, in words (the report's "What ran", the model card)."""
        if self.model.startswith(PYTHON_SCORER):
            clip = PROBABILITY_CLIP
            return (f"the Python scorer {self.model}: toxicity = its P(toxic) p, reward = log((1 - p) / p) with p "
                    f"clipped to [{clip:g}, {1 - clip:g}]")
        return f"{self.model}: reward = logit of {self.not_hate_label!r}, toxicity = P({self.hate_label!r})"

    def check(self):
        _require(self.batch_size > 0, "reward.batch_size", "must be positive")
        _require(self.model.strip() != "", "reward.model",
                 "must name a Hub id, a local folder or a Python scorer (python:MODULE:FUNCTION)")
        _require(self.not_hate_label != self.hate_label, "reward.hate_label", "must differ from reward.not_hate_label")


@dataclasses.dataclass(frozen=True)
class ComputeSettings:
    device: Literal["auto", "cpu", "cuda"]
    dtype: Literal["auto", "float32", "bfloat16", "float16"]
    compile_generation: bool  # on CUDA: static KV cache + torch.compile (CUDA graphs) for sampling
    # threads and processes have defaults only for code that builds these settings itself; params.yaml names both
    threads: Optional[int] = None  # CPU threads for torch and OpenMP in every stage; None: torch's default
    processes: int = 1  # data-parallel processes (torchrun) for the stages that sample, score and train

    def check(self):
        _require(self.threads is None or self.threads > 0, "compute.threads", "must be null or positive")
        _require(self.processes > 0, "compute.processes", "must be positive (1: one process)")

    def apply_threads(self):
        """Set the thread count for this process: torch's (if it is loaded) and OpenMP's and MKL's (read when
        torch, numpy's BLAS or sklearn start). Called by every stage's entry point (io.run_stage)."""
        if self.threads is None:
            return
        for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
            os.environ[var] = str(self.threads)
        if "torch" in sys.modules:
            sys.modules["torch"].set_num_threads(self.threads)
        logging.getLogger("detox").info("compute.threads: %d CPU threads (torch, OpenMP)", self.threads)


@dataclasses.dataclass(frozen=True)
class LoraSettings:
    r: int
    alpha: int
    dropout: float
    target_modules: Union[Literal["auto"], list[str]]  # auto: PEFT's default layers for the model type

    def check(self, prefix="lora"):
        _require(self.r > 0, f"{prefix}.r", "must be positive")
        _require(self.alpha > 0, f"{prefix}.alpha", "must be positive")
        _require(0 <= self.dropout < 1, f"{prefix}.dropout", "must be in [0, 1)")
        _require(len(self.target_modules) > 0, f"{prefix}.target_modules", "must be auto or name at least one module")


@dataclasses.dataclass(frozen=True)
class GenerationSettings:
    min_length: int
    top_k: int  # 0 disables top-k: sample from the whole distribution, as the lab does
    top_p: float
    do_sample: bool
    output_min_length: int  # PPO rollouts: max_new_tokens is drawn from [min, max) once per batch
    output_max_length: int
    batch_size: int  # prompts per generate() call in PPO rollouts

    def check(self):
        _require(self.min_length >= 0, "generation.min_length", "must be >= 0")
        _require(self.top_k >= 0, "generation.top_k", "must be >= 0")
        _require(0 < self.top_p <= 1, "generation.top_p", "must be in (0, 1]")
        # PPO's ratio and KL use the policy's log-probs of the full distribution: responses drawn from a truncated
        # one (top-k, nucleus) or chosen greedily are not the policy's own samples, and the update is biased with
        # no error. The same settings drive the evaluation, so they are refused, not warned about.
        why = ("PPO trains on the policy's own samples: its log-probs and KL are those of the full distribution, so "
               "rollouts must sample from all of it")
        _require(self.top_k == 0, "generation.top_k", f"is {self.top_k}; must be 0 (no top-k): {why}")
        _require(self.top_p == 1.0, "generation.top_p", f"is {self.top_p}; must be 1.0 (no nucleus cut): {why}")
        _require(self.do_sample, "generation.do_sample", f"is false; must be true (greedy rollouts): {why}")
        _require(self.output_min_length > 0, "generation.output_min_length", "must be positive")
        _require(
            self.output_max_length > self.output_min_length,
            "generation.output_max_length",
            "must be larger than generation.output_min_length (lengths are drawn from [min, max))",
        )
        _require(self.batch_size > 0, "generation.batch_size", "must be positive")


@dataclasses.dataclass(frozen=True)
class PPOSettings:
    enabled: bool  # the ppo and evaluate@ppo stages (off: placeholders)
    learning_rate: float
    batch_size: int  # rollouts per PPO step
    mini_batch_size: int
    epochs: int  # PPO epochs over each batch
    max_steps: int
    init_kl_coef: float
    adaptive_kl: bool
    target_kl: float  # target of the adaptive KL controller (TRL's `target`)
    horizon: float
    max_kl: float  # stop training early when objective/kl exceeds this (.inf: never)
    checkpoint_every: int  # steps between resumable checkpoints; 0 disables them
    lora: LoraSettings  # PPO's adapter on the (merged) starting policy

    def check(self):
        self.lora.check("ppo.lora")
        _require(self.learning_rate > 0, "ppo.learning_rate", "must be positive")
        _require(self.batch_size > 0, "ppo.batch_size", "must be positive")
        _require(self.mini_batch_size > 0, "ppo.mini_batch_size", "must be positive")
        _require(
            self.batch_size % self.mini_batch_size == 0,
            "ppo.mini_batch_size",
            f"({self.mini_batch_size}) must divide ppo.batch_size ({self.batch_size})",
        )
        _require(self.epochs > 0, "ppo.epochs", "must be positive")
        _require(self.max_steps > 0, "ppo.max_steps", "must be positive")
        _require(self.init_kl_coef >= 0, "ppo.init_kl_coef", "must be >= 0")
        _require(self.target_kl > 0, "ppo.target_kl", "must be positive")
        _require(self.horizon > 0, "ppo.horizon", "must be positive")
        _require(self.max_kl > 0, "ppo.max_kl", "must be positive")
        _require(self.checkpoint_every >= 0, "ppo.checkpoint_every", "must be >= 0 (0 disables checkpoints)")


@dataclasses.dataclass(frozen=True)
class JudgeSettings:
    model: str  # Hub id or local folder of a toxicity classifier, or python:MODULE:FUNCTION; never the reward's
    revision: Optional[str]
    toxic_label: Optional[str]  # a classifier's: toxicity = P(this label), looked up by name in config.label2id;
                                # a Python scorer returns P(toxic) itself (null)
    allow_pickle: bool

    def describe(self) -> str:
        kind = "a Python scorer" if self.model.startswith(PYTHON_SCORER) else f"label {self.toxic_label!r}"
        return f"{self.model} ({kind})"

    @property
    def name(self) -> str:
        """The judge's name in sample columns and metrics: the last part of its id or folder (a Python scorer:
        module and function)."""
        if self.model.startswith(PYTHON_SCORER):
            return scorer_display_name(self.model)
        return "".join(c if c.isalnum() or c in "-_." else "_" for c in self.model.rstrip("/\\").split("/")[-1])


@dataclasses.dataclass(frozen=True)
class EvaluationSettings:
    num_samples: Union[int, Literal["all"]]  # test prompts to evaluate, or "all"
    samples_per_prompt: int  # k responses sampled per prompt (RealToxicityPrompts: 25); 1 is the lab
    toxic_threshold: float  # a sample counts as toxic at P(hate) >= this (toxicity probability)
    max_new_tokens: int
    batch_size: int
    judges: list[JudgeSettings]  # independent toxicity classifiers scoring the same samples; [] turns them off

    def check(self):
        if self.num_samples != "all":
            _require(self.num_samples > 0, "evaluation.num_samples", 'must be positive or "all"')
        names = []
        for i, judge in enumerate(self.judges):
            _require(judge.model.strip() != "", f"evaluation.judges[{i}].model",
                     "must name a Hub id, a local folder or a Python scorer (python:MODULE:FUNCTION)")
            _require(judge.model.startswith(PYTHON_SCORER) or bool(judge.toxic_label),
                     f"evaluation.judges[{i}].toxic_label",
                     "must name the classifier's toxic label (null only for a python: scorer)")
            _require(not (judge.model.startswith(PYTHON_SCORER) and judge.toxic_label is not None),
                     f"evaluation.judges[{i}].toxic_label",
                     f"is {judge.toxic_label!r}, but {judge.model} is a Python scorer, which returns P(toxic) itself and "
                     "has no labels; set it to null")
            _require(judge.name not in names, f"evaluation.judges[{i}].model",
                     f"gives the judge name {judge.name!r} twice (names are the last part of the id or folder)")
            names.append(judge.name)
        _require(self.samples_per_prompt > 0, "evaluation.samples_per_prompt", "must be positive")
        _require(0 < self.toxic_threshold < 1, "evaluation.toxic_threshold", "must be in (0, 1), e.g. 0.5")
        _require(self.max_new_tokens > 0, "evaluation.max_new_tokens", "must be positive")
        _require(self.batch_size > 0, "evaluation.batch_size", "must be positive")


@dataclasses.dataclass(frozen=True)
class BestOfNSettings:
    enabled: bool  # the best_of_n stage: rejection sampling from the starting policy
    n: int  # candidates sampled per kept response (n-fold generation cost)

    def check(self):
        _require(self.n >= 2, "best_of_n.n", "must be >= 2 (best of 1 is the starting policy itself)")


@dataclasses.dataclass(frozen=True)
class DPOSettings:
    enabled: bool  # the dpo_pairs, dpo and evaluate@dpo stages (off: placeholders)
    num_prompts: Union[int, Literal["all"]]  # train prompts sampled for pairs (the first ones), or "all"
    n: int  # responses sampled per prompt from the starting policy; chosen = highest reward, rejected = lowest
    max_new_tokens: int  # the sampled responses' token cap
    min_margin: float  # keep a pair only when reward(chosen) - reward(rejected) >= this (and > 0)
    min_pairs: int  # fewer pairs than this: refused, naming the settings that make more
    beta: float  # DPO's beta: the strength of the implicit KL to the reference (the starting policy)
    learning_rate: float
    epochs: float
    max_steps: int  # -1: run the whole `epochs`; > 0 caps the number of optimizer steps
    batch_size: int  # pairs per optimizer step
    max_length: int  # prompt + response tokens (TRL's max_length): at least max_prompt_length + max_new_tokens
    max_prompt_length: int  # at least data.max_prompt_tokens, so TRL cuts no prompt
    logging_steps: int
    lora: LoraSettings  # a fresh adapter on the starting policy (its own, not PPO's)

    def check(self):
        if self.num_prompts != "all":
            _require(self.num_prompts > 0, "dpo.num_prompts", 'must be positive or "all"')
        _require(self.n >= 2, "dpo.n", "must be >= 2 (a pair needs two responses)")
        _require(self.max_new_tokens > 0, "dpo.max_new_tokens", "must be positive")
        _require(self.min_margin >= 0, "dpo.min_margin", "must be >= 0")
        _require(self.min_pairs >= 1, "dpo.min_pairs", "must be >= 1")
        _require(self.beta > 0, "dpo.beta", "must be positive")
        _require(self.learning_rate > 0, "dpo.learning_rate", "must be positive")
        _require(self.epochs > 0, "dpo.epochs", "must be positive")
        _require(self.max_steps == -1 or self.max_steps > 0, "dpo.max_steps", "must be -1 or positive")
        _require(self.batch_size > 0, "dpo.batch_size", "must be positive")
        _require(self.logging_steps > 0, "dpo.logging_steps", "must be positive")
        _require(0 < self.max_prompt_length < self.max_length, "dpo.max_prompt_length",
                 f"must be positive and below dpo.max_length ({self.max_length})")
        _require(self.max_new_tokens <= self.max_length - self.max_prompt_length, "dpo.max_new_tokens",
                 f"({self.max_new_tokens}) must fit in dpo.max_length - dpo.max_prompt_length ({self.max_length} - "
                 f"{self.max_prompt_length} = {self.max_length - self.max_prompt_length}): TRL would cut the responses; "
                 f"raise dpo.max_length to {self.max_prompt_length + self.max_new_tokens} or lower dpo.max_new_tokens")
        self.lora.check("dpo.lora")


@dataclasses.dataclass(frozen=True)
class GRPOSettings:
    enabled: bool  # the grpo and evaluate@grpo stages (off: placeholders)
    group_size: int  # responses sampled per prompt; advantages are relative to the group's rewards
    batch_size: int  # prompts per step (per process): batch_size x group_size responses generated a step
    mini_batch_size: int  # responses per optimizer step; must divide batch_size x group_size
    epochs: int  # passes over each step's responses (above 1 the clip acts: the policy has moved since sampling)
    max_steps: int
    learning_rate: float
    beta: float  # weight of the per-token k3 KL to the starting policy (0: no KL term)
    clip: float  # the ratio is clipped to [1 - clip, 1 + clip]
    scale_rewards: bool  # divide by the group's std (GRPO); false: Dr. GRPO's unscaled advantages
    max_grad_norm: float  # gradients clipped to this norm (.inf: never)
    checkpoint_every: int  # steps between resumable checkpoints; 0 disables them
    lora: LoraSettings  # GRPO's own fresh adapter on the starting policy

    def check(self):
        _require(self.group_size >= 2, "grpo.group_size", "must be >= 2 (a group of one has no relative advantage)")
        _require(self.batch_size > 0, "grpo.batch_size", "must be positive")
        _require(self.mini_batch_size > 0, "grpo.mini_batch_size", "must be positive")
        responses = self.batch_size * self.group_size
        _require(responses % self.mini_batch_size == 0, "grpo.mini_batch_size",
                 f"({self.mini_batch_size}) must divide grpo.batch_size x grpo.group_size ({self.batch_size} x "
                 f"{self.group_size} = {responses} responses a step)")
        _require(self.epochs > 0, "grpo.epochs", "must be positive")
        _require(self.max_steps > 0, "grpo.max_steps", "must be positive")
        _require(self.learning_rate > 0, "grpo.learning_rate", "must be positive")
        _require(self.beta >= 0, "grpo.beta", "must be >= 0")
        _require(0 < self.clip < 1, "grpo.clip", "must be in (0, 1), e.g. 0.2")
        _require(self.max_grad_norm > 0, "grpo.max_grad_norm", "must be positive (.inf: no clipping)")
        _require(self.checkpoint_every >= 0, "grpo.checkpoint_every", "must be >= 0 (0 disables checkpoints)")
        self.lora.check("grpo.lora")
        # The ratio and the KL compare log-probs of the same function at two times; LoRA dropout would make each
        # forward pass another function, so ratio and KL would be noise rather than the policy's change.
        _require(self.lora.dropout == 0, "grpo.lora.dropout",
                 f"is {self.lora.dropout}; must be 0: GRPO's ratio and KL compare the policy's log-probs across forward "
                 "passes, and dropout would make them differ by noise")


@dataclasses.dataclass(frozen=True)
class SFTSettings:
    learning_rate: float
    epochs: float
    max_steps: int  # -1: run the whole `epochs`; > 0 caps the number of optimizer steps
    batch_size: int
    max_target_tokens: int  # reference summaries are truncated to this many tokens
    logging_steps: int
    eval_samples: Union[int, Literal["all"]]  # test prompts for the ROUGE comparison (greedy decoding)
    eval_max_new_tokens: int
    lora: LoraSettings

    def check(self):
        _require(self.learning_rate > 0, "sft.learning_rate", "must be positive")
        _require(self.epochs > 0, "sft.epochs", "must be positive")
        _require(self.max_steps == -1 or self.max_steps > 0, "sft.max_steps", "must be -1 or positive")
        _require(self.batch_size > 0, "sft.batch_size", "must be positive")
        _require(self.max_target_tokens > 0, "sft.max_target_tokens", "must be positive")
        _require(self.logging_steps > 0, "sft.logging_steps", "must be positive")
        if self.eval_samples != "all":
            _require(self.eval_samples > 0, "sft.eval_samples", 'must be positive or "all"')
        _require(self.eval_max_new_tokens > 0, "sft.eval_max_new_tokens", "must be positive")
        self.lora.check("sft.lora")


@dataclasses.dataclass(frozen=True)
class ReportSettings:
    bootstrap_resamples: int
    bootstrap_seed: int
    confidence: float
    qualitative_rows: int  # rows in each of the "largest improvements / regressions" tables

    min_pairs: int  # fewer paired prompts than this: the report says the sample is too small to tell

    def check(self):
        _require(100 <= self.bootstrap_resamples <= MAX_RESAMPLES, "report.bootstrap_resamples",
                 f"must be between 100 and {MAX_RESAMPLES:,} (10,000 already gives stable 95% intervals)")
        _require(0 <= self.bootstrap_seed < 2**32, "report.bootstrap_seed", "must be in [0, 2**32)")
        _require(self.min_pairs >= 2, "report.min_pairs", "must be >= 2")
        _require(0 < self.confidence < 1, "report.confidence", "must be in (0, 1), e.g. 0.95")
        _require(self.qualitative_rows > 0, "report.qualitative_rows", "must be positive")


@dataclasses.dataclass(frozen=True)
class PublishSettings:
    method: str  # a method that trains weights, or best: the report's answer (best-of-N has no weights)

    def check(self):
        _require(self.method in (*TRAINED, "best"), "publish.method",
                 f"is {self.method!r}; expected one of {listed([*TRAINED, 'best'])}")


@dataclasses.dataclass(frozen=True)
class GuardSettings:
    max_rougeL_drop: float  # largest allowed drop of mean ROUGE-L (absolute, 0..1)
    max_kl: float  # largest allowed per-token KL(detoxified || reference) on evaluation responses
    min_mean_length: float  # smallest allowed mean response length (tokens) after detox
    max_perplexity_ratio: float  # largest allowed after/before ratio of mean perplexity under the starting policy
    min_distinct2_ratio: float  # smallest allowed after/before ratio of distinct-2 (mode collapse)
    min_judge_agreement: float  # a judge's relative toxicity fall must reach this share of the reward model's

    def check(self):
        _require(0 <= self.max_rougeL_drop <= 1, "guard.max_rougeL_drop", "must be in [0, 1] (ROUGE-L is in [0, 1])")
        _require(self.max_kl > 0, "guard.max_kl", "must be positive")
        _require(self.min_mean_length >= 0, "guard.min_mean_length", "must be >= 0")
        _require(self.max_perplexity_ratio >= 1, "guard.max_perplexity_ratio", "must be >= 1 (1: no rise allowed)")
        _require(0 <= self.min_distinct2_ratio <= 1, "guard.min_distinct2_ratio", "must be in [0, 1]")
        _require(0 <= self.min_judge_agreement <= 1, "guard.min_judge_agreement", "must be in [0, 1]")


MOVED = {"lora": "ppo.lora"}  # sections of earlier releases: where they went
ALGORITHMS = {"ppo": PPOSettings, "dpo": DPOSettings, "grpo": GRPOSettings, "best_of_n": BestOfNSettings}
SECTIONS = {
    "data": DataSettings,
    "prompt": PromptSettings,
    "policy": PolicySettings,
    "reward": RewardSettings,
    "compute": ComputeSettings,
    "generation": GenerationSettings,
    **{m.name: ALGORITHMS[m.algorithm] for m in METHODS},  # a section a method (detoxkit.methods)
    "evaluation": EvaluationSettings,
    "sft": SFTSettings,
    "report": ReportSettings,
    "publish": PublishSettings,
    "guard": GuardSettings,
}


MAX_RESAMPLES = 1_000_000
FINITE_EXEMPT = {"ppo.max_kl", "grpo.max_grad_norm"}  # .inf is meaningful there: never stop early
# Booleans in YAML 1.1 only: YAML 1.2 (ruamel.yaml, as DVC reads params.yaml) takes them as text
YAML11_BOOLS = {"yes": "true", "y": "true", "on": "true", "no": "false", "n": "false", "off": "false"}


def split_needs(params: "Params") -> list[tuple[str, str, Union[int, str]]]:
    """(split, setting, rows it needs) for every setting that takes prompts from the prepared data."""
    needs = [("train", "ppo.batch_size", params.ppo.batch_size)] if params.ppo.enabled else []
    needs.append(("test", "evaluation.num_samples", params.evaluation.num_samples))
    if params.policy.adapter == "sft":
        needs += [("train", "sft.batch_size", params.sft.batch_size), ("test", "sft.eval_samples", params.sft.eval_samples)]
    if params.dpo.enabled:
        needs.append(("train", "dpo.num_prompts", params.dpo.num_prompts))
    if params.grpo.enabled:
        needs.append(("train", "grpo.batch_size", params.grpo.batch_size))
    return needs


def check_split_sizes(params: "Params", n_train: int, n_test: int, where: str = "the prepared data",
                      keys: Optional[tuple[str, ...]] = None, world: int = 1):
    """Rules across data and the stages that consume it (the `check` stage: all of them; a stage: `keys`,
    the settings it reads). Fails in the first stage that knows the sizes. `world` data-parallel processes
    each take ppo.batch_size train prompts a step."""
    fixes = {"ppo.batch_size": "lower data.test_size, widen data.min_chars/max_chars or add data",
             "grpo.batch_size": "lower data.test_size, widen data.min_chars/max_chars or add data",
             "sft.batch_size": "lower data.test_size, widen data.min_chars/max_chars or add data",
             "dpo.num_prompts": 'use "all", or lower data.test_size'}
    for split, key, need in split_needs(params):
        if keys is not None and key not in keys or need == "all":
            continue
        if key in ("ppo.batch_size", "grpo.batch_size") and world > 1:
            if n_train < need * world:
                raise PipelineError(
                    f"{where} has {n_train} train prompts, fewer than {key} x {world} processes "
                    f"({need} x {world} = {need * world}): each process takes {key} prompts a step; lower "
                    f"{key} to {max(n_train // world, 1)} or less, run fewer processes, or {fixes[key]}")
            continue
        if split == "train" and n_train < need:
            raise PipelineError(f"{where} has {n_train} train prompts, fewer than {key} ({need}); lower {key}, "
                                f"{fixes[key]}")
        if split == "test" and n_test < need:
            raise PipelineError(
                f"{key} asks for {need} samples but the test split of {where} has only {n_test}; "
                'lower it, use "all", or raise data.test_size'
            )


def _require(ok: bool, key: str, why: str):
    if not ok:
        raise ParamsError(f"params.yaml: {key} {why}")


def _type_name(tp) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value, tp, key: str):
    """Check `value` against the annotation `tp`; return it (ints are accepted where floats are)."""
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        errors = []
        for arm in typing.get_args(tp):
            try:
                return _coerce(value, arm, key)
            except ParamsError as err:
                errors.append(err)
        allowed = " or ".join(_describe(a) for a in typing.get_args(tp))
        raise ParamsError(f"params.yaml: {key} is {value!r}; expected {allowed}")
    if origin is Literal:
        if value in typing.get_args(tp):
            return value
        raise ParamsError(f"params.yaml: {key} is {value!r}; expected one of {list(typing.get_args(tp))}")
    if origin is list:
        (item_tp,) = typing.get_args(tp)
        if not isinstance(value, list):
            raise ParamsError(f"params.yaml: {key} is {value!r}; expected a list")
        return [_coerce(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value)]
    if tp is type(None):
        if value is None:
            return None
        raise ParamsError(f"params.yaml: {key} is {value!r}; expected null")
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, key)
    if tp is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return _finite(float(value), key)
    if tp is float and isinstance(value, str):  # a quoted number ("1e-3"), as PyYAML (YAML 1.1) wrote 1e-3
        try:
            return _finite(float(value), key)
        except ValueError:
            pass
    if tp is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if tp in (str, bool) and isinstance(value, tp):
        return value
    if tp is bool and isinstance(value, str) and value.lower() in YAML11_BOOLS:
        raise ParamsError(f"params.yaml: {key} is {value!r}, which YAML 1.2 (DVC's reading, and the stages') takes as "
                          f"text, not a boolean as YAML 1.1 did; write {YAML11_BOOLS[value.lower()]}")
    raise ParamsError(f"params.yaml: {key} is {value!r}; expected {_describe(tp)}")


def _finite(value: float, key: str) -> float:
    if math.isnan(value) or (math.isinf(value) and key not in FINITE_EXEMPT):
        raise ParamsError(f"params.yaml: {key} is {value}; expected a finite number")
    return value


def _describe(tp) -> str:
    if typing.get_origin(tp) is Literal:
        args = typing.get_args(tp)
        return repr(args[0]) if len(args) == 1 else "one of " + ", ".join(repr(a) for a in args)
    if tp is type(None):
        return "null"
    if typing.get_origin(tp) is list:
        return "a list"
    return {"int": "an integer", "float": "a number", "str": "a string", "bool": "true or false"}.get(
        _type_name(tp), _type_name(tp)
    )


def _build(cls, raw, prefix: str):
    if not isinstance(raw, dict):
        raise ParamsError(f"params.yaml: {prefix} must be a mapping of settings, got {raw!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(raw) - set(names))
    if unknown:
        raise ParamsError(
            f"params.yaml: unknown key {prefix}.{unknown[0]} (known keys in {prefix}: {', '.join(names)}); "
            "check the spelling"
        )
    missing = [n for n in names if n not in raw]
    if missing:
        raise ParamsError(f"params.yaml: missing key {prefix}.{missing[0]}; add it (see docs/parameters.md)")
    obj = cls(**{n: _coerce(raw[n], hints[n], f"{prefix}.{n}") for n in names})
    if hasattr(obj, "check") and prefix in SECTIONS:
        obj.check()
    return obj


@dataclasses.dataclass(frozen=True)
class Params:
    """Every section of params.yaml, validated."""

    seed: int  # one seed for the split, LoRA/value-head init, sampling and PPO minibatch order
    raw: dict
    data: DataSettings
    prompt: PromptSettings
    policy: PolicySettings
    reward: RewardSettings
    compute: ComputeSettings
    generation: GenerationSettings
    ppo: PPOSettings
    evaluation: EvaluationSettings
    best_of_n: BestOfNSettings
    dpo: DPOSettings
    grpo: GRPOSettings
    sft: SFTSettings
    report: ReportSettings
    publish: PublishSettings
    guard: GuardSettings


def _check_lengths(built: dict):
    """Rules between lengths in different sections, before any stage runs."""
    data, gen, ev, dpo = built["data"], built["generation"], built["evaluation"], built["dpo"]
    if dpo.enabled and data.max_prompt_tokens > dpo.max_prompt_length:
        raise ParamsError(
            f"params.yaml: data.max_prompt_tokens ({data.max_prompt_tokens}) is above dpo.max_prompt_length "
            f"({dpo.max_prompt_length}): TRL would cut DPO's longer prompts (a seq2seq prompt loses its end, the "
            f"instruction's closing words); set dpo.max_prompt_length to {data.max_prompt_tokens} (and dpo.max_length "
            f"to {data.max_prompt_tokens + dpo.max_new_tokens}) or lower data.max_prompt_tokens")
    # min_length counts a seq2seq decoder's start token; causal policies get the same number of new tokens
    least = gen.min_length - 1
    caps = [("generation.output_min_length", gen.output_min_length), ("evaluation.max_new_tokens", ev.max_new_tokens)]
    if dpo.enabled:
        caps.append(("dpo.max_new_tokens", dpo.max_new_tokens))
    for key, cap in caps:
        if least > cap:
            raise ParamsError(
                f"params.yaml: generation.min_length ({gen.min_length}, i.e. at least {least} new tokens) is above "
                f"{key} ({cap}): no response could be both; lower generation.min_length to {cap + 1} or raise {key}")


def read_yaml(path: Union[str, Path]) -> dict:
    """`path` as DVC reads it: YAML 1.2 through ruamel.yaml's safe loader (dvc.utils.serialize.parse_yaml), so a stage
    sees the values `dvc params diff` and dvc.lock record (PyYAML's YAML 1.1 read `010` as 8 and `on` as true), and a
    key given twice is refused, as DVC refuses the file (PyYAML kept the last silently)."""
    path = Path(path)
    if not path.is_file():
        raise ParamsError(f"{path} not found; run the stage from the repository root, where params.yaml lives")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise ParamsError(f"{path} is not UTF-8 text (byte {err.start}: {err.reason}); re-save it as UTF-8") from None
    try:
        raw = YAML(typ="safe").load(text)
    except DuplicateKeyError as err:
        key, line, first = _duplicate_key(text) or (str(err.problem).split('"')[1], err.problem_mark.line + 1, None)
        also = f" (first on line {first})" if first else ""
        raise ParamsError(f"{path} line {line}: {key} is given twice{also}; DVC refuses a file with a repeated key "
                          "(and PyYAML would keep the last one silently): keep one") from None
    except MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ParamsError(f"{path}{where} is not valid YAML ({err.problem or err.context}); fix it") from None
    except YAMLError as err:
        raise ParamsError(f"{path} is not valid YAML ({str(err).splitlines()[0]}); fix it") from None
    if not isinstance(raw, dict):
        raise ParamsError(f"{path} must hold a mapping of sections, got {type(raw).__name__}")
    return raw


def _duplicate_key(text: str) -> Optional[tuple[str, int, int]]:
    """(dotted key, its line, the line it first appeared on) of the first key given twice in one mapping."""
    def walk(node, prefix: str):
        if isinstance(node, MappingNode):
            seen = {}
            for key, value in node.value:
                name = f"{prefix}.{key.value}" if prefix else str(key.value)
                if key.value in seen:
                    return name, key.start_mark.line + 1, seen[key.value]
                seen[key.value] = key.start_mark.line + 1
                found = walk(value, name)
                if found:
                    return found
        elif isinstance(node, SequenceNode):
            for i, value in enumerate(node.value):
                found = walk(value, f"{prefix}[{i}]")
                if found:
                    return found
        return None

    return walk(YAML(typ="safe").compose(text), "")


def load_params(path: Union[str, Path] = "params.yaml") -> Params:
    """Read `path` and validate all of it: `seed`, every section, and the rules between sections."""
    raw = read_yaml(path)
    unknown = sorted(set(raw) - set(SECTIONS) - {"seed"})
    if set(MOVED) & set(unknown):
        old = sorted(set(MOVED) & set(unknown))[0]
        raise ParamsError(f"params.yaml: section {old!r} is now {MOVED[old]} (the methods are equals, each with its "
                          f"settings in its own section); move it there")
    if unknown:
        raise ParamsError(
            f"params.yaml: unknown section {unknown[0]!r} (known: seed, {', '.join(SECTIONS)}); check the spelling"
        )
    if "seed" not in raw:
        raise ParamsError("params.yaml: missing key seed; add e.g. `seed: 42`")
    seed = _coerce(raw["seed"], int, "seed")
    _require(0 <= seed < 2**32, "seed", f"is {seed}; must be in [0, 2**32) (numpy and torch seeds)")
    built = {}
    for name in SECTIONS:
        if name not in raw:
            raise ParamsError(f"params.yaml: missing section {name}; see docs/parameters.md")
        built[name] = _build(SECTIONS[name], raw[name], name)
    if built["data"].summary_column is None and built["policy"].adapter == "sft":
        raise ParamsError("params.yaml: policy.adapter is sft, but data.summary_column is null (a prompt-only dataset "
                          "has no references to fine-tune on); set policy.adapter: null, or name the summary column")
    if not any(built[m].enabled for m in TRAINED):
        raise ParamsError(f"params.yaml: every trained method is off ({', '.join(f'{m}.enabled' for m in TRAINED)} "
                          "are false): nothing would be trained or published; set one of them to true")
    method = built["publish"].method
    if method in TRAINED and not built[method].enabled:
        others = [m for m in TRAINED if built[m].enabled]
        raise ParamsError(f"params.yaml: publish.method is {method}, but {method}.enabled is false (nothing to "
                          f"publish); set {method}.enabled: true, or publish.method: {listed([*others, 'best'])}")
    _check_lengths(built)
    return Params(seed=seed, raw=raw, **built)
