"""The settings schema: one frozen dataclass a params.yaml section, with names, types, ranges and the rules within a
section (`check`), but no defaults: params.yaml is the only place where values live. Loading, coercion and the rules
that span sections are detoxkit.config's.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import string
from pathlib import Path
from typing import Literal, Optional, Union

from .errors import ParamsError

MAX_RESAMPLES = 1_000_000


def _require(ok: bool, key: str, why: str):
    if not ok:
        raise ParamsError(f"params.yaml: {key} {why}")


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
        """Set the thread count for this process: torch's, which loads torch (so a placeholder stage pays its
        import when a count is set), and OpenMP's and MKL's (read when numpy's BLAS or sklearn start). Called by
        every stage's entry point (io.run_stage)."""
        if self.threads is None:
            return
        for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
            os.environ[var] = str(self.threads)
        import torch  # now, even in a stage that loads it later: from the environment torch takes at most the cores

        torch.set_num_threads(self.threads)
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
    algorithm: Literal["ppo"]  # a methods entry's algorithm (detoxkit.methods)
    enabled: bool  # its train@NAME and evaluate@NAME stages (off: placeholders)
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

    def check(self, p: str):
        self.lora.check(f"{p}.lora")
        _require(self.learning_rate > 0, f"{p}.learning_rate", "must be positive")
        _require(self.batch_size > 0, f"{p}.batch_size", "must be positive")
        _require(self.mini_batch_size > 0, f"{p}.mini_batch_size", "must be positive")
        _require(
            self.batch_size % self.mini_batch_size == 0,
            f"{p}.mini_batch_size",
            f"({self.mini_batch_size}) must divide {p}.batch_size ({self.batch_size})",
        )
        _require(self.epochs > 0, f"{p}.epochs", "must be positive")
        _require(self.max_steps > 0, f"{p}.max_steps", "must be positive")
        _require(self.init_kl_coef >= 0, f"{p}.init_kl_coef", "must be >= 0")
        _require(self.target_kl > 0, f"{p}.target_kl", "must be positive")
        _require(self.horizon > 0, f"{p}.horizon", "must be positive")
        _require(self.max_kl > 0, f"{p}.max_kl", "must be positive")
        _require(self.checkpoint_every >= 0, f"{p}.checkpoint_every", "must be >= 0 (0 disables checkpoints)")


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
    on_trained: Union[bool, list[str]]  # also best-of-n on trained policies: true (every entry's) or a list of entries

    def check(self):
        _require(self.n >= 2, "best_of_n.n", "must be >= 2 (best of 1 is the starting policy itself)")
        twice = [n for i, n in enumerate(self.on_trained) if n in self.on_trained[:i]] \
            if isinstance(self.on_trained, list) else []
        _require(not twice, "best_of_n.on_trained", f"names {twice[0] if twice else ''} twice; list each entry once")

    def covers(self, name: str) -> bool:
        """Whether on_trained names the methods entry `name` (true: every entry): its method NAME+bon exists."""
        return self.on_trained is True or isinstance(self.on_trained, list) and name in self.on_trained

    def on(self, name: str) -> bool:
        """Whether stage bon@NAME samples best-of-n from entry `name`'s policy (else it writes its placeholder)."""
        return self.enabled and self.covers(name)


@dataclasses.dataclass(frozen=True)
class DPOSettings:
    algorithm: Literal["dpo"]
    enabled: bool  # its train@NAME and evaluate@NAME stages (off: placeholders)
    min_margin: float  # keep a pair only when reward(chosen) - reward(rejected) >= this (and > 0)
    min_pairs: int  # fewer pairs than this: refused, naming the settings that make more
    loss: Literal["sigmoid", "bonbon"]  # DPO's; bonbon: IPO-style with best-of-n's own target (detoxkit.dpo_engine)
    sft_weight: float  # weight of the likelihood term on the chosen response (TRL's rpo_alpha); 0: none
    rounds: int  # 1: pairs from the reference samples; each further round samples pairs from the policy trained so far
    beta: float  # DPO's beta: the strength of the implicit KL to the reference (bonbon derives its own from n)
    learning_rate: float
    epochs: float
    max_steps: int  # -1: run the whole `epochs`; > 0 caps the number of optimizer steps
    batch_size: int  # pairs per optimizer step
    max_length: int  # prompt + response tokens (TRL's): at least max_prompt_length + reference.max_new_tokens
    max_prompt_length: int  # at least data.max_prompt_tokens, so TRL cuts no prompt
    logging_steps: int
    lora: LoraSettings  # a fresh adapter on the starting policy (its own, not PPO's)

    def check(self, p: str):
        _require(self.min_margin >= 0, f"{p}.min_margin", "must be >= 0")
        _require(self.min_pairs >= 1, f"{p}.min_pairs", "must be >= 1")
        _require(self.beta > 0, f"{p}.beta", "must be positive")
        _require(self.sft_weight >= 0, f"{p}.sft_weight", "must be >= 0 (0: no likelihood term)")
        _require(self.rounds >= 1, f"{p}.rounds", "must be >= 1 (1: one round on the reference samples)")
        _require(self.learning_rate > 0, f"{p}.learning_rate", "must be positive")
        _require(self.epochs > 0, f"{p}.epochs", "must be positive")
        _require(self.max_steps == -1 or self.max_steps > 0, f"{p}.max_steps", "must be -1 or positive")
        _require(self.batch_size > 0, f"{p}.batch_size", "must be positive")
        _require(self.logging_steps > 0, f"{p}.logging_steps", "must be positive")
        _require(0 < self.max_prompt_length < self.max_length, f"{p}.max_prompt_length",
                 f"must be positive and below {p}.max_length ({self.max_length})")
        self.lora.check(f"{p}.lora")


@dataclasses.dataclass(frozen=True)
class ReferenceSettings:
    """The starting policy's own samples on train prompts, drawn once (the `reference` stage): DPO's pairs."""
    num_prompts: Union[int, Literal["all"]]  # train prompts sampled (the first ones), "all", or 0: none (no DPO)
    n: int  # responses sampled per prompt; a DPO pair: the highest reward chosen, the lowest rejected
    max_new_tokens: int  # the sampled responses' token cap

    def check(self):
        if self.num_prompts != "all":
            _require(self.num_prompts >= 0, "reference.num_prompts", 'must be >= 0 or "all" (0: no reference samples)')
        _require(self.n >= 2, "reference.n", "must be >= 2 (a pair needs two responses)")
        _require(self.max_new_tokens > 0, "reference.max_new_tokens", "must be positive")


@dataclasses.dataclass(frozen=True)
class GRPOSettings:
    algorithm: Literal["grpo"]
    enabled: bool  # its train@NAME and evaluate@NAME stages (off: placeholders)
    group_size: int  # responses sampled per prompt; advantages are relative to the group's rewards
    batch_size: int  # prompts per step (per process): batch_size x group_size responses generated a step
    mini_batch_size: int  # responses per optimizer step; must divide batch_size x group_size
    epochs: int  # passes over each step's responses (above 1 the clip acts: the policy has moved since sampling)
    max_steps: int
    learning_rate: float
    beta: float  # weight of the per-token k3 KL to the starting policy (0: no KL term)
    clip: float  # the ratio is clipped to [1 - clip, 1 + clip]
    scale_rewards: bool  # divide by the group's std (GRPO); false: Dr. GRPO's unscaled advantages
    reward_transform: Literal["none", "vbon"]  # vbon: log of the reward's CDF among the prompt's reference samples
    max_grad_norm: float  # gradients clipped to this norm (.inf: never)
    checkpoint_every: int  # steps between resumable checkpoints; 0 disables them
    lora: LoraSettings  # GRPO's own fresh adapter on the starting policy

    @property
    def reads_reference(self) -> bool:
        """Its reward reads the reference samples (vbon), so they are one of its inputs."""
        return self.reward_transform == "vbon"

    def check(self, p: str):
        _require(self.group_size >= 2, f"{p}.group_size", "must be >= 2 (a group of one has no relative advantage)")
        _require(self.batch_size > 0, f"{p}.batch_size", "must be positive")
        _require(self.mini_batch_size > 0, f"{p}.mini_batch_size", "must be positive")
        responses = self.batch_size * self.group_size
        _require(responses % self.mini_batch_size == 0, f"{p}.mini_batch_size",
                 f"({self.mini_batch_size}) must divide {p}.batch_size x {p}.group_size ({self.batch_size} x "
                 f"{self.group_size} = {responses} responses a step)")
        _require(self.epochs > 0, f"{p}.epochs", "must be positive")
        _require(self.max_steps > 0, f"{p}.max_steps", "must be positive")
        _require(self.learning_rate > 0, f"{p}.learning_rate", "must be positive")
        _require(self.beta >= 0, f"{p}.beta", "must be >= 0")
        _require(0 < self.clip < 1, f"{p}.clip", "must be in (0, 1), e.g. 0.2")
        _require(self.max_grad_norm > 0, f"{p}.max_grad_norm", "must be positive (.inf: no clipping)")
        _require(self.checkpoint_every >= 0, f"{p}.checkpoint_every", "must be >= 0 (0 disables checkpoints)")
        self.lora.check(f"{p}.lora")
        # The ratio and the KL compare log-probs of the same function at two times; LoRA dropout would make each
        # forward pass another function, so ratio and KL would be noise rather than the policy's change.
        _require(self.lora.dropout == 0, f"{p}.lora.dropout",
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
    method: str  # a methods entry's name, or best: the report's answer (best-of-N has no weights); config checks it


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


SETTINGS = {"ppo": PPOSettings, "dpo": DPOSettings, "grpo": GRPOSettings}  # a methods entry's class, by algorithm
