"""The published adapter's model card (README.md in the Hub's layout) and the README of a folder with nothing
published, rendered from the artifacts they describe: the adapter's own files, its training stage's train.json and
its comparison file (metrics/compare/<method>.json), so a card cannot disagree with them. Stage `publish` writes
them."""
from __future__ import annotations

from pathlib import Path

import yaml

from .compare import smoke_note
from .hub import is_local
from .methods import BY_ALGORITHM, listed
from .stats import NA, crossed_guards

HEADLINE = [("toxicity", "Toxicity (reward {scorer}, {toxicity_label})"),  # in the scorer's own names (setup)
            ("expected_max_toxicity", "Expected maximum toxicity over k samples"),
            ("toxicity_probability", "Toxicity probability (a sample at or above the threshold)"),
            ("perplexity", "Perplexity under the starting policy"), ("rougeL", "ROUGE-L")]


def ci(s: dict) -> str:
    return (f"{s['before']:.4f} | {s['after']:.4f} | {s['diff']:+.4f} "
            f"[{s['diff_ci_low']:+.4f}, {s['diff_ci_high']:+.4f}]")


def usage(meta: dict, causal: bool, folder: Path) -> list[str]:
    """A snippet that loads `folder` with transformers and PEFT alone, from any working folder: the base model, the
    starting adapter merged into it (if there is one), then the detoxifying adapter. A local base model and the
    folder are absolute paths, resolved now (a relative one would name a folder under wherever the snippet runs);
    a Hub id stays an id. tests/test_pipeline.py runs it as written."""
    auto = "AutoModelForCausalLM" if causal else "AutoModelForSeq2SeqLM"
    local = is_local(meta["base_model"])
    base = str(Path(meta["base_model"]).expanduser().resolve()) if local else meta["base_model"]
    revision = f", revision={meta['revision']!r}" if meta.get("revision") and not local else ""
    lines = ["from peft import PeftModel", f"from transformers import {auto}, AutoTokenizer", "",
             f"folder = {str(Path(folder).resolve())!r}  # this folder as published (change it if you move it), or "
             "its Hub id once pushed",
             *([f"base_model = {base!r}  # the local base model as published: change it if you move it"] if local
               else [f"base_model = {base!r}"]),
             f"base = {auto}.from_pretrained(base_model{revision})",
             f"tokenizer = AutoTokenizer.from_pretrained(base_model{revision})"]
    if meta.get("start_adapter"):
        lines.append(f"base = PeftModel.from_pretrained(base, folder, subfolder={meta['start_adapter']!r})"
                     ".merge_and_unload()  # the starting adapter, merged first")
    lines += ["model = PeftModel.from_pretrained(base, folder).eval()  # the detoxifying adapter",
              'ids = tokenizer("' + ("Complete: The weather today" if causal else
                                     "Summarize the following conversation. ...") + '", return_tensors="pt")',
              'out = model.generate(input_ids=ids["input_ids"], attention_mask=ids["attention_mask"], max_new_tokens=40)',
              "print(tokenizer.decode(out[0" + (", ids['input_ids'].shape[1]:" if causal else "") +
              "], skip_special_tokens=True))"]
    return lines


def model_card(meta: dict, adapter: dict, summary: dict, train: dict, data_source: str, folder: Path,
               why: str = "") -> str:
    """The model card of the adapter published in `folder`, from its own files and its comparison file (`summary`)."""
    causal = adapter.get("task_type") == "CAUSAL_LM"
    run, ran = summary.get("setup", {}), train.get("settings") or {}
    key = summary["method"]  # the comparison file of the method publish chose
    about, method = BY_ALGORITHM[summary["algorithm"]], summary["label"]
    head = f" and {method}'s value head" if about.value_head else ""
    base, local = meta["base_model"], is_local(meta["base_model"])
    front = {**({} if local else {"base_model": base}),  # the Hub wants an id here: a local path is named below
             "library_name": "peft",
             "pipeline_tag": "text-generation" if causal else "text2text-generation",
             "tags": [*([about.library] if about.library else []), about.name, "lora", "detoxification", "rlhf", "dvc"]}
    if not is_local(data_source):  # a Hub dataset id
        front["datasets"] = [data_source]
    conf = f"{summary['confidence']:.0%}"
    rows = [f"| {label.format(**run)} | {ci(summary[key])} |" for key, label in HEADLINE if summary.get(key)]
    rows += [f"| Judge {name}: toxicity | {ci(m['toxicity'])} |" for name, m in summary.get("judges", {}).items()]
    crossed = crossed_guards(summary["guards"])
    na = [name for name, c in summary["guards"].items() if c == NA]
    smoke = smoke_note({key: summary})
    lines = [
        "---", yaml.safe_dump(front, sort_keys=False).strip(), "---", "",
        f"# {meta['base_model'].rstrip('/').split('/')[-1]}, detoxified with {method}", "",
        *([f"> **{smoke}**", ""] if smoke else []),
        f"A LoRA adapter {about.describe} to make `{meta['base_model']}` less toxic, by the reproducible DVC pipeline "
        "of this repository." + (f" Why this method: {why}." if why else ""), "",
        "## Model description", "",
        (f"- Base model: a local folder, `{base}` (not on the Hub, so the metadata above has no base_model)"
         if local else f"- Base model: `{base}` (revision `{meta.get('revision')}`)")
        + (", with a starting LoRA adapter (`start_adapter/`, from the sft stage) merged before training"
           if meta.get("start_adapter") else ""),
        f"- Trained: the LoRA weights (r = {ran.get('lora_r')}){head}, "
        f"{train.get('trainable_parameters') or 0:,} of {train.get('total_parameters') or 0:,} parameters",
        f"- Reward: {run.get('reward_definition') or run.get('reward', '?')}", "",
        "## Training data", "",
        f"Prompts from `{data_source}` (the pipeline's train split); evaluated on {summary['num_prompts']} held-out "
        f"prompts, k = {summary['samples_per_prompt']} samples each.", "",
        "## Training procedure", "",
        (f"{method} ran {train.get('steps_done')} optimizer steps on {train.get('pairs')} preference pairs"
         if train.get("pairs") is not None else f"{method} ran {train.get('steps_done')} of {ran.get('max_steps', '?')} "
         "steps") +
        (f", stopped early at step {train.get('early_stop_step')} (KL above methods.{key}.max_kl)"
         if train.get("early_stopped") else "") + ".", "",
        "| setting | value |", "|---|---|",
        *[f"| {k} | {v} |" for k, v in ran.items()], "",
        "## Evaluation", "",
        f"Same prompts and seed before (the starting policy) and after; differences with {conf} bootstrap "
        "confidence intervals over prompts.", "",
        "| metric | before | after | after - before [CI] |", "|---|---|---|---|", *rows, "",
        f"Reward-hacking guards crossed: {', '.join(crossed) if crossed else 'none'}"
        + (f" ({', '.join(na)}: n/a, cannot fire on this run)." if na else "."), "",
        "## How to use", "",
        "With transformers and PEFT only (this is what the pipeline's `load_detoxified` does):", "",
        "```python", *usage(meta, causal, folder), "```", "",
        (f"`value_head.safetensors` is {method}'s value head, needed only to continue training. "
         if about.value_head else "")
        + (f"With the starting adapter merged, `with model.disable_adapter():` gives the starting policy, which was "
           f"{method}'s reference." if meta.get("start_adapter") else
           f"`with model.disable_adapter():` gives the base model, which was {method}'s reference."), "",
        "## Limitations", "",
        "Toxicity is measured by classifiers, which miss what they were not trained on; check the judges and the "
        "guards above, and read the samples in the pipeline's report before relying on this model.", "",
    ]
    return "\n".join(lines)


def nothing_published(why: str, smoke, enabled) -> str:
    """The README.md of a folder with nothing published in it (publish.method best with no answer)."""
    return "\n".join(["# Nothing published", "", *([f"> **{smoke}**", ""] if smoke else []),
                      f"publish.method is best, but {why}, so no adapter was published: an adapter here would claim a "
                      "detoxification the evaluation did not show. See reports/report.md. To publish one anyway (its "
                      f"card will show its numbers), set publish.method to {listed(enabled)} and run `dvc repro`.", ""])
