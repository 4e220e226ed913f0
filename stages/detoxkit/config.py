"""Typed, strict settings read from `params.yaml`: reading it (YAML 1.2, as DVC does), coercing each value to the
schema's type (detoxkit.settings) and the rules that span sections.

`params.yaml` is the only place where values live: the dataclasses of detoxkit.settings declare names, types and
ranges but no defaults, so a missing, unknown or ill-typed key stops a stage with the key's name
before any model is loaded. Every stage validates the whole file (every section and the rules that
span sections), so a mistake in a later stage's settings stops the first stage, not the fifth.
Numbers must be finite (.nan/.inf are refused) except where a field says otherwise.
"""
from __future__ import annotations

import dataclasses
import math
import types
import typing
from pathlib import Path
from typing import Literal, Optional, Union

from ruamel.yaml import YAML, MappingNode, SequenceNode
from ruamel.yaml.constructor import DuplicateKeyError
from ruamel.yaml.error import MarkedYAMLError, YAMLError

from .errors import ParamsError, PipelineError
from .methods import NAME, RESERVED, TRAINING, listed
from .settings import (SETTINGS, BestOfNSettings, ComputeSettings, DataSettings, DPOSettings, EvaluationSettings,
                       GenerationSettings, GuardSettings, PolicySettings, PromptSettings, PublishSettings,
                       ReferenceSettings, RewardSettings, ReportSettings, SFTSettings, _require)


MOVED = {"lora": "methods.ppo.lora", "ppo": "methods.ppo", "dpo": "methods.dpo",  # sections of earlier releases
         "grpo": "methods.grpo"}
SECTIONS = {
    "data": DataSettings,
    "prompt": PromptSettings,
    "policy": PolicySettings,
    "reward": RewardSettings,
    "compute": ComputeSettings,
    "generation": GenerationSettings,
    "evaluation": EvaluationSettings,
    "best_of_n": BestOfNSettings,
    "reference": ReferenceSettings,
    "methods": None,  # named entries, each of its algorithm's class (_build_methods)
    "sft": SFTSettings,
    "report": ReportSettings,
    "publish": PublishSettings,
    "guard": GuardSettings,
}


FINITE_EXEMPT = {"max_kl", "max_grad_norm"}  # a methods entry's: .inf is meaningful there (never stop early)
# Booleans in YAML 1.1 only: YAML 1.2 (ruamel.yaml, as DVC reads params.yaml) takes them as text
YAML11_BOOLS = {"yes": "true", "y": "true", "on": "true", "no": "false", "n": "false", "off": "false"}


def split_needs(params: "Params") -> list[tuple[str, str, Union[int, str]]]:
    """(split, setting, rows it needs) for every setting that takes prompts from the prepared data."""
    needs = [("test", "evaluation.num_samples", params.evaluation.num_samples)]
    if params.policy.adapter == "sft":
        needs += [("train", "sft.batch_size", params.sft.batch_size), ("test", "sft.eval_samples", params.sft.eval_samples)]
    needs.append(("train", "reference.num_prompts", params.reference.num_prompts))
    for name, entry in params.methods.items():  # an online method takes batch_size train prompts a step
        if entry.enabled and entry.algorithm in ("ppo", "grpo"):
            needs.append(("train", f"methods.{name}.batch_size", entry.batch_size))
    return needs


def check_split_sizes(params: "Params", n_train: int, n_test: int, where: str = "the prepared data",
                      keys: Optional[tuple[str, ...]] = None, world: int = 1):
    """Rules across data and the stages that consume it (the `check` stage: all of them; a stage: `keys`,
    the settings it reads). Fails in the first stage that knows the sizes. `world` data-parallel processes
    each take an online method's batch_size train prompts a step."""
    more = "lower data.test_size, widen data.min_chars/max_chars or add data"
    for split, key, need in split_needs(params):
        if keys is not None and key not in keys or need == "all":
            continue
        fix = 'use "all", or lower data.test_size' if key == "reference.num_prompts" else more
        if key.startswith("methods.") and world > 1:
            if n_train < need * world:
                raise PipelineError(
                    f"{where} has {n_train} train prompts, fewer than {key} x {world} processes "
                    f"({need} x {world} = {need * world}): each process takes {key} prompts a step; lower "
                    f"{key} to {max(n_train // world, 1)} or less, run fewer processes, or {fix}")
            continue
        if split == "train" and n_train < need:
            raise PipelineError(f"{where} has {n_train} train prompts, fewer than {key} ({need}); lower {key}, {fix}")
        if split == "test" and n_test < need:
            raise PipelineError(
                f"{key} asks for {need} samples but the test split of {where} has only {n_test}; "
                'lower it, use "all", or raise data.test_size'
            )


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
                errors.append((arm, err))
        for arm, err in errors:  # the arm the value was meant for says more: an item of a list, a YAML 1.1 boolean
            if typing.get_origin(arm) is list and isinstance(value, list) or "YAML 1.2" in str(err):
                raise err
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
    exempt = key.startswith("methods.") and key.rsplit(".", 1)[1] in FINITE_EXEMPT
    if math.isnan(value) or (math.isinf(value) and not exempt):
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


def _build_methods(raw) -> dict:
    """The `methods` section: named entries, each built as its `algorithm`'s settings class and checked under its
    own name (methods.NAME.learning_rate ...)."""
    if not isinstance(raw, dict) or not raw:
        raise ParamsError("params.yaml: methods must be a mapping of named method entries (e.g. `ppo: {algorithm: ppo, "
                          "...}`), at least one; see docs/methods.md")
    built = {}
    for name, entry in raw.items():
        key = f"methods.{name}"
        if not isinstance(name, str) or not NAME.fullmatch(name) or name in RESERVED:
            raise ParamsError(f"params.yaml: {key} is not a method name: use lowercase letters, digits and _ (a letter "
                              f"first, at most 40), and none of {sorted(RESERVED)}; it names the method's files")
        if not isinstance(entry, dict) or entry.get("algorithm") not in SETTINGS:
            got = entry.get("algorithm") if isinstance(entry, dict) else entry
            raise ParamsError(f"params.yaml: {key}.algorithm is {got!r}; expected one of {list(TRAINING)} (a methods "
                              "entry is `algorithm:` and that algorithm's settings)")
        obj = _build(SETTINGS[entry["algorithm"]], entry, key)
        obj.check(key)
        built[name] = obj
    return built


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
    evaluation: EvaluationSettings
    best_of_n: BestOfNSettings
    reference: ReferenceSettings
    methods: dict  # name -> PPOSettings, DPOSettings or GRPOSettings, in params.yaml's order
    sft: SFTSettings
    report: ReportSettings
    publish: PublishSettings
    guard: GuardSettings


def _check_lengths(built: dict):
    """Rules between lengths in different sections, before any stage runs."""
    data, gen, ev, ref = built["data"], built["generation"], built["evaluation"], built["reference"]
    for name, m in built["methods"].items():
        vbon = m.enabled and m.algorithm == "grpo" and m.reward_transform == "vbon"
        if vbon and ref.num_prompts == 0:
            raise ParamsError(f"params.yaml: methods.{name}.reward_transform is vbon, which reads each prompt's "
                              "reference samples, but reference.num_prompts is 0 (none drawn); set it (e.g. 256 or "
                              f"\"all\"), or methods.{name}.reward_transform: none")
        if vbon and not gen.output_min_length <= ref.max_new_tokens < gen.output_max_length:
            raise ParamsError(
                f"params.yaml: methods.{name}.reward_transform is vbon, which ranks each rollout's reward among the "
                f"reference samples' rewards, but reference.max_new_tokens ({ref.max_new_tokens}) is outside the "
                f"rollouts' lengths [generation.output_min_length, output_max_length) = [{gen.output_min_length}, "
                f"{gen.output_max_length}): responses of other lengths are not the same distribution; set "
                "reference.max_new_tokens within it")
        if m.enabled and m.algorithm == "dpo" and m.loss == "bonbon" and m.rounds > 1:
            raise ParamsError(f"params.yaml: methods.{name}.loss is bonbon with rounds {m.rounds}: BoNBoN's target is "
                              "the gap between the best and the worst of n samples of the starting policy, which later "
                              f"rounds' samples are not; set methods.{name}.rounds: 1 or loss: sigmoid")
    for name, dpo in built["methods"].items():
        if dpo.algorithm != "dpo" or not dpo.enabled:
            continue
        key = f"methods.{name}"
        if data.max_prompt_tokens > dpo.max_prompt_length:
            raise ParamsError(
                f"params.yaml: data.max_prompt_tokens ({data.max_prompt_tokens}) is above {key}.max_prompt_length "
                f"({dpo.max_prompt_length}): TRL would cut DPO's longer prompts (a seq2seq prompt loses its end, the "
                f"instruction's closing words); set {key}.max_prompt_length to {data.max_prompt_tokens} (and "
                f"{key}.max_length to {data.max_prompt_tokens + ref.max_new_tokens}) or lower data.max_prompt_tokens")
        if ref.max_new_tokens > dpo.max_length - dpo.max_prompt_length:
            raise ParamsError(
                f"params.yaml: reference.max_new_tokens ({ref.max_new_tokens}) must fit in {key}.max_length - "
                f"{key}.max_prompt_length ({dpo.max_length} - {dpo.max_prompt_length} = "
                f"{dpo.max_length - dpo.max_prompt_length}): TRL would cut the responses; "
                f"raise {key}.max_length to {dpo.max_prompt_length + ref.max_new_tokens} or lower "
                "reference.max_new_tokens")
        if ref.num_prompts == 0:
            raise ParamsError(f"params.yaml: {key} is a DPO method, which trains on pairs from the reference samples, "
                              f"but reference.num_prompts is 0 (none drawn); set it (e.g. 256 or \"all\"), or set "
                              f"{key}.enabled: false")
    # min_length counts a seq2seq decoder's start token; causal policies get the same number of new tokens
    least = gen.min_length - 1
    caps = [("generation.output_min_length", gen.output_min_length), ("evaluation.max_new_tokens", ev.max_new_tokens)]
    if ref.num_prompts != 0:
        caps.append(("reference.max_new_tokens", ref.max_new_tokens))
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
        raise ParamsError(f"params.yaml: section {old!r} is now {MOVED[old]} (the methods are named entries of "
                          f"`methods:`, each with `algorithm:` and its settings; docs/methods.md); move it there")
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
        built[name] = _build_methods(raw[name]) if name == "methods" else _build(SECTIONS[name], raw[name], name)
    if built["data"].summary_column is None and built["policy"].adapter == "sft":
        raise ParamsError("params.yaml: policy.adapter is sft, but data.summary_column is null (a prompt-only dataset "
                          "has no references to fine-tune on); set policy.adapter: null, or name the summary column")
    methods = built["methods"]
    if not any(m.enabled for m in methods.values()):
        raise ParamsError(f"params.yaml: every method is off ({', '.join(f'methods.{m}.enabled' for m in methods)} "
                          "are false): nothing would be trained or published; set one of them to true")
    method, on = built["publish"].method, [m for m in methods if methods[m].enabled]
    if method != "best" and method not in methods:
        raise ParamsError(f"params.yaml: publish.method is {method!r}; expected one of {listed([*methods, 'best'])} "
                          "(a methods entry, or best: the report's answer)")
    if method != "best" and not methods[method].enabled:
        raise ParamsError(f"params.yaml: publish.method is {method}, but methods.{method}.enabled is false (nothing to "
                          f"publish); set methods.{method}.enabled: true, or publish.method: {listed([*on, 'best'])}")
    named = built["best_of_n"].on_trained
    unknown = [name for name in named if name not in methods] if isinstance(named, list) else []
    if unknown:
        raise ParamsError(f"params.yaml: best_of_n.on_trained names {unknown[0]!r}, which is no methods entry; name "
                          f"some of {listed(methods)}, or write true (every entry)")
    _check_lengths(built)
    return Params(seed=seed, raw=raw, **built)
