"""Loading the policy and its adapters, safely and with clear errors (the reward classifier: scoring.py).

The policy is a seq2seq LM (T5, BART) or a decoder-only causal LM (GPT-2, Llama, Qwen, SmolLM...); the
kind is read from its config (`policy_kind`), never from a setting.
Safety: never `trust_remote_code`; weights come from safetensors unless `allow_pickle` is set.
Policy layout: a Lab-2 (or sft-stage) LoRA adapter is merged into the base weights, and PPO trains a
fresh LoRA adapter on top. Disabling that PPO adapter then gives back exactly the starting policy,
which is what TRL uses as the frozen reference (no second copy of the model in memory).
"""
from __future__ import annotations

import contextlib
import errno
import json
import logging
import pickle
import re
import shutil
from pathlib import Path
from typing import Optional

import torch

from .settings import ComputeSettings, LoraSettings, PolicySettings
from .errors import PipelineError
from .hub import is_local, offline_hint, require_hub

log = logging.getLogger("detox.models")

POLICY_FILE = "policy.json"  # written beside a saved detoxified adapter: how to rebuild its base
VALUE_HEAD_FILE = "value_head.safetensors"


def resolve_device(compute: ComputeSettings) -> torch.device:
    if compute.device == "cuda" and not torch.cuda.is_available():
        raise PipelineError("compute.device is cuda but no CUDA GPU is visible; use auto or cpu")
    if compute.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(compute.device)


def peak_memory(device: torch.device) -> dict:
    """This process's peak memory so far, for the cost columns: CUDA memory allocated by torch on a GPU, else the
    process's peak resident set (Linux ru_maxrss, kB), which includes the Python runtime and every loaded model."""
    if device.type == "cuda":
        return {"peak_memory_mb": torch.cuda.max_memory_allocated(device) / 2**20, "peak_memory_kind": "CUDA allocated"}
    import resource

    return {"peak_memory_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "peak_memory_kind": "process peak RSS"}


def resolve_dtype(compute: ComputeSettings, device: torch.device) -> torch.dtype:
    """auto: bf16 on GPUs that support it (the lab trains in bf16), float32 elsewhere."""
    if compute.dtype == "auto":
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    return getattr(torch, compute.dtype)


def _check_local_folder(kind: str, ref: str):
    path = Path(ref).expanduser()
    if not path.exists():
        raise PipelineError(f"{kind} {ref} does not exist; give an existing folder saved with save_pretrained or a Hub id")
    if not (path / "config.json").is_file():
        raise PipelineError(f"{kind} {ref} has no config.json; it must be a folder written by save_pretrained")


def _weights_kwargs(ref: str, allow_pickle: bool, key: str) -> dict:
    if allow_pickle:
        return {}
    if is_local(ref):
        path = Path(ref).expanduser()
        if not list(path.glob("*.safetensors")) and list(path.glob("*.bin")):
            raise PipelineError(
                f"{ref} has only pickle (*.bin) weights, which can run code when loaded; convert them to "
                f"safetensors, or set {key}.allow_pickle: true if you trust the source"
            )
    return {"use_safetensors": True}


def _hub_error(kind: str, ref: str, what: str, err: Exception) -> PipelineError:
    """A local folder's own problem, or the Hub/offline hint for an id."""
    if is_local(ref):
        return PipelineError(f"{kind} {ref}: {what} could not be loaded: {str(err).splitlines()[0]}")
    return PipelineError(offline_hint(kind, ref, err))


def load_config(kind: str, ref: str, revision: Optional[str]):
    from transformers import AutoConfig

    if is_local(ref):
        _check_local_folder(kind, ref)
    else:
        require_hub(kind, ref)
    try:
        return AutoConfig.from_pretrained(ref, revision=revision, trust_remote_code=False)
    except (OSError, ValueError) as err:
        raise _hub_error(kind, ref, "config.json", err) from None


def from_pretrained_safely(auto_cls, kind: str, ref: str, revision, allow_pickle: bool, key: str, **kwargs):
    from safetensors import SafetensorError

    try:
        return auto_cls.from_pretrained(
            ref, revision=revision, trust_remote_code=False, **_weights_kwargs(ref, allow_pickle, key), **kwargs
        )
    except RuntimeError as err:  # weights that do not fit config.json (size mismatch), or a damaged file
        first = next((ln.strip() for ln in str(err).splitlines() if "mismatch" in ln), str(err).splitlines()[0])
        raise PipelineError(
            f"{kind} {ref}: its weights do not match its config.json ({first[:300]}); save the model and its "
            "config together with save_pretrained, or point the setting at the right folder"
        ) from None
    except SafetensorError as err:  # a truncated or overwritten weights file
        where = next((str(f) for f in sorted(Path(ref).expanduser().glob("*.safetensors")) if _damaged(f)), ref) \
            if is_local(ref) else ref
        raise PipelineError(
            f"{kind} {where}: its weights cannot be read ({str(err).splitlines()[0]}): the file is truncated or "
            "damaged; copy or save the model again (save_pretrained), or point the setting at a whole folder") from None
    except OSError as err:
        if "safetensors" in str(err) and not allow_pickle:
            raise PipelineError(
                f"{kind} {ref} has no safetensors weights; convert them, or set {key}.allow_pickle: true "
                f"if you trust the source ({str(err).splitlines()[0]})"
            ) from None
        raise _hub_error(kind, ref, "weights", err) from None


def load_tokenizer(kind: str, ref: str, revision: Optional[str]):
    from transformers import AutoTokenizer

    folder = Path(ref)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        file = folder / name
        if folder.is_dir() and file.is_file():  # a damaged file: transformers' own error would not name it
            try:
                json.loads(file.read_text(encoding="utf-8"))
            except (ValueError, UnicodeDecodeError) as err:
                raise PipelineError(f"{kind} {ref}: {file} is damaged (not JSON: {err}); restore the folder or save "
                                    "the tokenizer again (tokenizer.save_pretrained)") from None
    try:
        tokenizer = AutoTokenizer.from_pretrained(ref, revision=revision, trust_remote_code=False)
    except (OSError, ValueError) as err:
        raise _hub_error(kind, ref, "tokenizer", err) from None
    except Exception as err:  # a tokenizer transformers cannot build (e.g. a slow one missing its library)
        if not folder.is_dir():
            raise
        raise PipelineError(f"{kind} {ref}: its tokenizer cannot be loaded ({type(err).__name__}: "
                            f"{str(err).strip().splitlines()[0] if str(err).strip() else 'no message'}); check the "
                            "tokenizer files in that folder") from None
    if tokenizer.pad_token is None:  # batches need one; padding is masked out, so EOS serves (as for GPT-2)
        fallback = tokenizer.eos_token or tokenizer.unk_token
        if fallback is None:
            raise PipelineError(f"{kind} {ref}: the tokenizer has no pad, EOS or unknown token to pad with; add a "
                                "pad token (tokenizer.add_special_tokens) and save it with the model")
        tokenizer.pad_token = fallback
        log.info("%s %s: the tokenizer has no pad token; padding with %r", kind, ref, fallback)
    return tokenizer


SEQ2SEQ, CAUSAL = "seq2seq", "causal"
GENERATING = ("ForCausalLM", "LMHeadModel", "ForConditionalGeneration")


def policy_kind(config) -> str:
    """seq2seq or causal, from the config alone; anything else (a classifier, an encoder) is refused."""
    from transformers.models.auto.modeling_auto import (MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
                                                        MODEL_FOR_MASKED_LM_MAPPING_NAMES,
                                                        MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES)

    archs = list(getattr(config, "architectures", None) or [])
    model_type = config.model_type
    if getattr(config, "is_encoder_decoder", False):
        if model_type in MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES:
            return SEQ2SEQ
        what = f"an encoder-decoder {model_type!r} model with no text-to-text LM class (speech or vision?)"
    elif archs:
        if any(a.endswith(GENERATING) for a in archs) and model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
            return CAUSAL
        kind = " (a classifier)" if any("Classification" in a for a in archs) else ""
        what = f"a {archs[0]}{kind}"
    elif model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES and model_type not in MODEL_FOR_MASKED_LM_MAPPING_NAMES:
        return CAUSAL
    elif model_type in MODEL_FOR_MASKED_LM_MAPPING_NAMES:
        what = f"an encoder-only {model_type!r} model"
    else:
        what = f"a {model_type!r} model"
    raise PipelineError(
        f"policy.model is {what}, not a language model that writes text; give a seq2seq LM (T5, BART) or a "
        "decoder-only causal LM (GPT-2, Llama, Qwen, SmolLM)"
    )


def check_policy_config(policy: PolicySettings):
    """The policy's config, read before any weights load; fails unless it is a seq2seq or causal LM."""
    config = load_config("policy.model", policy.model, policy.revision)
    try:
        policy_kind(config)
    except PipelineError as err:
        raise PipelineError(str(err).replace("policy.model is", f"policy.model {policy.model} is", 1)) from None
    return config


def check_context(config, params):
    """A causal policy reads prompt and response in one window: fail before any weights load when the
    longest prompt (data.max_prompt_tokens) plus the most new tokens a stage asks for does not fit in it."""
    window = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)
    if policy_kind(config) != CAUSAL or not window:
        return
    asks = [("generation.output_max_length", params.generation.output_max_length - 1),
            ("evaluation.max_new_tokens", params.evaluation.max_new_tokens)]
    if params.reference.num_prompts != 0:
        asks.append(("reference.max_new_tokens", params.reference.max_new_tokens))
    if params.policy.adapter == "sft":
        asks += [("sft.eval_max_new_tokens", params.sft.eval_max_new_tokens),
                 ("sft.max_target_tokens", params.sft.max_target_tokens)]
    key, new = max(asks, key=lambda a: a[1])
    prompt = params.data.max_prompt_tokens
    if prompt + new > window:
        fix = (f"lower data.max_prompt_tokens to {window - new} or less (longer dialogues are cut to fit), or "
               f"lower {key}" if window - new >= 64 else f"lower {key} well below {window}")
        raise PipelineError(
            f"policy.model {params.policy.model} reads at most {window} tokens, but a prompt of up to "
            f"data.max_prompt_tokens ({prompt}) plus {new} new tokens ({key}) needs {prompt + new}; {fix}"
        )


def check_policy(params):
    """Everything about policy.model that can be checked from its config, before any weights load: that it
    is a language model, and (causal) that prompt and response fit its window. Returns the config."""
    config = check_policy_config(params.policy)
    check_context(config, params)
    return config


def auto_class(kind: str):
    from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM

    return AutoModelForSeq2SeqLM if kind == SEQ2SEQ else AutoModelForCausalLM


def start_adapter_path(policy: PolicySettings, sft_dir) -> Optional[Path]:
    """The starting LoRA adapter: the sft stage's, a user folder, or None (plain model)."""
    if policy.adapter is None:
        return None
    path = Path(sft_dir if policy.adapter == "sft" else policy.adapter).expanduser()
    if not (path / "adapter_config.json").is_file():
        if policy.adapter == "sft":
            raise PipelineError(f"{path} holds no adapter although policy.adapter is sft; run `dvc repro sft`")
        raise PipelineError(
            f"policy.adapter {policy.adapter} has no adapter_config.json; give a PEFT adapter folder "
            "(save_pretrained of a PeftModel), sft, or null"
        )
    try:
        json.loads((path / "adapter_config.json").read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError):
        raise PipelineError(damaged_output(path / "adapter_config.json")) from None
    if _damaged(path / "adapter_model.safetensors"):  # before any model loads
        raise PipelineError(damaged_output(path / "adapter_model.safetensors"))
    _check_adapter_weights(path, policy.allow_pickle)
    return path


def check_start_adapter(policy: PolicySettings):
    """The `check` stage's look at a user's starting adapter folder (the sft stage's does not exist yet, and is
    written as safetensors): its config and its weights, before anything trains."""
    if policy.adapter not in (None, "sft"):
        start_adapter_path(policy, None)


def _check_adapter_weights(path: Path, allow_pickle: bool):
    """Safetensors weights, or pickle (adapter_model.bin) only with policy.allow_pickle and only what torch's
    weights-only unpickler reads (tensors, no code): refused in one line, before any model loads."""
    if (path / "adapter_model.safetensors").is_file():
        return
    pickled = path / "adapter_model.bin"
    if not pickled.is_file():
        raise PipelineError(f"policy.adapter {path} has no adapter_model.safetensors; give a PEFT adapter folder "
                            "(save_pretrained of a PeftModel), sft, or null")
    if not allow_pickle:
        raise PipelineError(
            f"adapter {path} has no adapter_model.safetensors, only pickle weights ({pickled.name}), which can run "
            "code when loaded; convert it, or set policy.allow_pickle: true if you trust the source")
    try:
        torch.load(pickled, map_location="cpu", weights_only=True)
    except Exception as err:
        raise PipelineError(unsafe_pickle(pickled, err)) from None


def unsafe_pickle(file: Path, err: Exception) -> str:
    """One line for a pickle that torch's weights-only unpickler refuses; it never suggests unsafe loading."""
    found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(err))
    what = f"the Python object {found.group(1)}" if found else f"something other than tensors ({type(err).__name__})"
    return (f"{file} holds {what}, which weights-only loading refuses (unpickling it could run code); save the "
            "adapter again with safetensors (save_pretrained(folder, safe_serialization=True)) from a source you "
            "trust")


def _load_adapter(model, path: Path, allow_pickle: bool, merge: bool, trainable: bool = False):
    from peft import PeftModel

    if not allow_pickle and not (path / "adapter_model.safetensors").exists():
        raise PipelineError(
            f"adapter {path} has no adapter_model.safetensors; convert it, or set policy.allow_pickle: true "
            "if you trust the source"
        )
    try:
        peft_model = PeftModel.from_pretrained(model, str(path), is_trainable=trainable)
    except Exception as err:
        if _damaged(path / "adapter_model.safetensors"):
            raise PipelineError(damaged_output(path / "adapter_model.safetensors")) from None
        if isinstance(err, pickle.UnpicklingError):  # a *.bin with more than tensors: never load it unsafely
            raise PipelineError(unsafe_pickle(path / "adapter_model.bin", err)) from None
        if not isinstance(err, (RuntimeError, ValueError, KeyError)):
            raise
        raise PipelineError(
            f"adapter {path} does not match the base model ({str(err).splitlines()[0][:300]}); "
            "use the adapter trained on policy.model, or set policy.adapter: null"
        ) from None
    if not merge:
        return peft_model
    model = peft_model.merge_and_unload()
    if hasattr(model, "peft_config"):  # merged: a plain model again; a stale config would confuse get_peft_model
        del model.peft_config
    return model


def load_policy(policy: PolicySettings, compute: ComputeSettings, adapter: Optional[Path]):
    """Base LM with the starting adapter (if any) merged in; returns (model, tokenizer, device).

    A causal policy's tokenizer pads on the right (TRL's PPO step and the SFT collator need it);
    generation pads prompts on the left itself (generation.pad_queries).
    """
    kind = policy_kind(check_policy_config(policy))
    device = resolve_device(compute)
    dtype = resolve_dtype(compute, device)
    tokenizer = load_tokenizer("policy.model", policy.model, policy.revision)
    if kind == CAUSAL:
        tokenizer.padding_side = "right"
    model = from_pretrained_safely(auto_class(kind), "policy.model", policy.model, policy.revision,
                                   policy.allow_pickle, "policy", dtype=dtype)
    if adapter is not None:
        model = _load_adapter(model, adapter, policy.allow_pickle, merge=True)
        log.info("merged starting adapter %s into %s", adapter, policy.model)
    model.to(device).eval()
    log.info("%s policy %s on %s in %s", kind, policy.model, device, str(dtype).removeprefix("torch."))
    return model, tokenizer, device


def _layers(config) -> dict:
    """The policy's modules by name, from its skeleton on the meta device (no memory, no weights)."""
    from accelerate import init_empty_weights

    with init_empty_weights():
        skeleton = auto_class(policy_kind(config)).from_config(config)
    return dict(skeleton.named_modules())


def _adaptable(modules: dict) -> list[str]:
    from transformers.pytorch_utils import Conv1D

    return sorted({n.rsplit(".", 1)[-1] for n, m in modules.items() if isinstance(m, (torch.nn.Linear, Conv1D))})


def lora_targets(config, lora: LoraSettings) -> Optional[list[str]]:
    """The layer names LoRA adapts: the list given, or for `auto` PEFT's own default for the model type
    (None if PEFT has none)."""
    from peft.utils import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as PEFT_DEFAULTS

    if lora.target_modules == "auto":
        return PEFT_DEFAULTS.get(config.model_type)
    return list(lora.target_modules)


def check_lora_targets(config, lora: LoraSettings, key: str = "lora"):
    """Fail before any weights load when the LoRA targets do not fit the policy.

    PEFT matches a name against the end of each module path (`q` matches
    `encoder.block.0...SelfAttention.q`) and only complains when nothing matches, so a typo in one of
    several names would silently train fewer layers. Checked on the model's meta-device skeleton.
    """
    modules = _layers(config)
    targets = lora_targets(config, lora)
    if targets is None:
        raise PipelineError(
            f"{key}.target_modules is auto, but PEFT has no default layers for {config.model_type!r} models; "
            f"list the layers to adapt, e.g. [q_proj, v_proj]. Its linear layers are {_adaptable(modules)}"
        )
    missing = [t for t in targets if not any(n == t or n.endswith("." + t) for n in modules)]
    if missing:
        raise PipelineError(
            f"{key}.target_modules {missing} match no layer of the {config.model_type!r} policy; its linear layers "
            f"are {_adaptable(modules)}. Use auto (PEFT's default for the model type) or names from that list"
        )


def attach_lora(model, lora: LoraSettings, key: str = "lora"):
    """A fresh LoRA adapter on the layers lora_targets names; PEFT's task type follows the policy's kind."""
    from peft import LoraConfig, TaskType, get_peft_model

    kind = policy_kind(model.config)
    config = LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout, bias="none",
                        target_modules=lora_targets(model.config, lora),
                        fan_in_fan_out=model.config.model_type == "gpt2",  # GPT-2's Conv1D stores W transposed
                        task_type=TaskType.SEQ_2_SEQ_LM if kind == SEQ2SEQ else TaskType.CAUSAL_LM)
    try:
        return get_peft_model(model, config)
    except ValueError as err:
        raise PipelineError(f"{key}.target_modules {lora.target_modules} do not fit the policy: {err}") from None


def trainable_parameters(model) -> tuple[int, int]:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable, sum(p.numel() for p in model.parameters())


SET_VALUED = ("target_modules", "exclude_modules")  # PEFT keeps these as sets: their order follows PYTHONHASHSEED


def save_adapter(peft_model, out_dir: Path):
    """`save_pretrained` of a PEFT model (safetensors), byte-identical for identical inputs: adapter_config.json is
    rewritten with its set-valued lists sorted (PEFT writes a set in the order of this process's string hashes, so
    a rerun with nothing changed rewrote it, and DVC called every later stage stale). Every stage that saves an
    adapter (sft, every trained method; publish copies one) saves it here."""
    with disk_space_named(out_dir):
        peft_model.save_pretrained(str(out_dir), safe_serialization=True)
        config_file = Path(out_dir) / "adapter_config.json"
        config = json.loads(config_file.read_text(encoding="utf-8"))
        for key in SET_VALUED:
            if isinstance(config.get(key), list):
                config[key] = sorted(config[key])
        config_file.write_text(json.dumps(config, indent=2, sort_keys=True), encoding="utf-8")  # PEFT's own layout


@contextlib.contextmanager
def disk_space_named(out_dir: Path):
    """A full disk while writing `out_dir` (safetensors' SafetensorError, or OSError ENOSPC) becomes one line naming
    the output folder. The output is written in a temporary folder (io.atomic_dir), so the previous one is kept,
    and so is a training stage's checkpoint: the next run resumes."""
    from safetensors import SafetensorError

    try:
        yield
    except (OSError, SafetensorError) as err:
        full = getattr(err, "errno", None) == errno.ENOSPC or any(
            s in str(err) for s in ("No space left", "os error 28"))
        if not full:
            raise
        stale = re.fullmatch(r"\.(.+)\.\w{8}\.tmp", Path(out_dir).name)  # atomic_dir's temporary name
        folder = Path(out_dir).with_name(stale.group(1)) if stale else Path(out_dir)
        raise PipelineError(f"{folder}: the disk is full ({str(err).splitlines()[0][:160]}); nothing was replaced "
                            "(the previous output and any checkpoint are kept): free disk space and rerun "
                            "`dvc repro`") from None


def save_detoxified(out_dir: Path, peft_model, v_head, policy: PolicySettings, adapter: Optional[Path]):
    """The LoRA adapter (PEFT format), PPO's value head (safetensors; None for DPO, which has none) and how to
    rebuild the starting policy: one layout for every trained method's folder."""
    from safetensors.torch import save_file

    save_adapter(peft_model, out_dir)
    with disk_space_named(out_dir):
        if v_head is not None:
            save_file({k: v.detach().float().cpu().contiguous() for k, v in v_head.state_dict().items()},
                      str(out_dir / VALUE_HEAD_FILE))
        if adapter is not None:
            shutil.copytree(adapter, out_dir / "start_adapter")
        meta = {"base_model": policy.model, "revision": policy.revision,
                "start_adapter": "start_adapter" if adapter is not None else None}
        (out_dir / POLICY_FILE).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")


def damaged_output(file: Path) -> str:
    folder = file.parent
    return (f"{file} is damaged (truncated or not what the detox/sft stage wrote); restore it with "
            f"`dvc checkout {folder}` or rebuild it with `dvc repro`")


def check_weights(key: str, ref: str):
    """A local model folder's safetensors weights open (their header covers the whole file): a copy cut short or
    overwritten is named here, in the `check` stage, rather than when a later stage loads it. A Hub id is not looked
    at (its files are the Hub's, checked by hash when downloaded)."""
    folder = Path(ref).expanduser()
    if not folder.is_dir():
        return
    for file in sorted(folder.glob("*.safetensors")):
        if _damaged(file):
            raise PipelineError(f"{key} {ref}: {file.name} is damaged (its safetensors header does not cover the file: "
                                "cut short or overwritten); copy or save the model there again")


def _damaged(file: Path) -> bool:
    """True when a safetensors file exists but cannot be opened (truncated, overwritten)."""
    if not file.is_file():
        return False
    from safetensors import safe_open

    try:
        with safe_open(str(file), framework="pt") as fh:
            fh.keys()
        return False
    except Exception:
        return True


def read_policy_meta(path: Path) -> dict:
    meta_file = path / POLICY_FILE
    if not meta_file.is_file():
        raise PipelineError(f"{path} has no {POLICY_FILE}; it is not a detoxified policy saved by the detox stage")
    try:
        meta = json.loads(meta_file.read_text(encoding="utf-8"))
        if not isinstance(meta, dict) or not isinstance(meta.get("base_model"), str):
            raise ValueError("no base_model")
        meta.setdefault("revision", None)
        meta.setdefault("start_adapter", None)
    except (ValueError, UnicodeDecodeError):
        raise PipelineError(damaged_output(meta_file)) from None
    return meta


def load_detoxified(path, compute: Optional[ComputeSettings] = None, allow_pickle: bool = False):
    """Load a saved detoxified policy in one call: base + starting adapter (merged) + PPO adapter.

    Returns (PeftModel, tokenizer, device). `model.disable_adapter()` gives the starting policy.
    """
    path = Path(path)
    meta = read_policy_meta(path)
    if _damaged(path / "adapter_model.safetensors"):  # before the base model loads
        raise PipelineError(damaged_output(path / "adapter_model.safetensors"))
    policy = PolicySettings(model=meta["base_model"], revision=meta["revision"], adapter=None,
                            allow_pickle=allow_pickle)
    compute = compute or ComputeSettings(device="auto", dtype="auto", compile_generation=False)
    start = path / meta["start_adapter"] if meta["start_adapter"] else None
    model, tokenizer, device = load_policy(policy, compute, start)
    model = _load_adapter(model, path, allow_pickle, merge=False)
    model.to(device).eval()
    return model, tokenizer, device
