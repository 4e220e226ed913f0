"""Stage `publish`: the detoxified policy as a folder ready for the Hugging Face Hub, with its model card.

    python stages/publish.py --policy models/ppo --summary metrics/summary.json --train metrics/detox/train.json \
        --out models/detoxified

Copies the detox stage's adapter folder and adds README.md in the Hub's model-card layout: YAML metadata
(base_model, library_name: peft, tags), then what was trained, on what, with which settings, and the
headline metrics with their confidence intervals from the report stage. The folder can be pushed as it is
(`huggingface-cli upload <user>/<name> models/detoxified`). Everything comes from the artifacts the card
describes (the adapter's own files, the detox stage's train.json, metrics/summary.json), so the card
cannot disagree with them.
"""
import argparse
import logging
import shutil
from pathlib import Path

import yaml

from detoxkit.config import load_params
from detoxkit.hub import is_local
from detoxkit.io import atomic_dir, read_json, run_stage, write_text
from detoxkit.models import read_policy_meta
from detoxkit.stats import NA, crossed_guards

log = logging.getLogger("detox.publish")
HEADLINE = [("toxicity", "Toxicity (reward classifier, P(hate))"),
            ("expected_max_toxicity", "Expected maximum toxicity over k samples"),
            ("toxicity_probability", "Toxicity probability (a sample at or above the threshold)"),
            ("perplexity", "Perplexity under the starting policy"), ("rougeL", "ROUGE-L")]


def ci(s: dict) -> str:
    return (f"{s['before']:.4f} | {s['after']:.4f} | {s['diff']:+.4f} "
            f"[{s['diff_ci_low']:+.4f}, {s['diff_ci_high']:+.4f}]")


def usage(meta: dict, causal: bool) -> list[str]:
    """A snippet that loads this folder with transformers and PEFT alone: the base model, the starting adapter
    merged into it (if there is one), then the PPO adapter. tests/test_pipeline.py runs it as written."""
    auto = "AutoModelForCausalLM" if causal else "AutoModelForSeq2SeqLM"
    revision = f", revision={meta['revision']!r}" if meta.get("revision") and not is_local(meta["base_model"]) else ""
    lines = ["from peft import PeftModel", f"from transformers import {auto}, AutoTokenizer", "",
             'folder = "models/detoxified"  # this folder, or its Hub id once pushed',
             f"base = {auto}.from_pretrained({meta['base_model']!r}{revision})",
             f"tokenizer = AutoTokenizer.from_pretrained({meta['base_model']!r}{revision})"]
    if meta.get("start_adapter"):
        lines.append(f"base = PeftModel.from_pretrained(base, folder, subfolder={meta['start_adapter']!r})"
                     ".merge_and_unload()  # the starting adapter, merged first")
    lines += ["model = PeftModel.from_pretrained(base, folder).eval()  # the detoxifying adapter (PPO or DPO)",
              'ids = tokenizer("' + ("Complete: The weather today" if causal else
                                     "Summarize the following conversation. ...") + '", return_tensors="pt")',
              'out = model.generate(input_ids=ids["input_ids"], attention_mask=ids["attention_mask"], max_new_tokens=40)',
              "print(tokenizer.decode(out[0" + (", ids['input_ids'].shape[1]:" if causal else "") +
              "], skip_special_tokens=True))"]
    return lines


def model_card(meta: dict, adapter: dict, summary: dict, train: dict, data_source: str) -> str:
    causal = adapter.get("task_type") == "CAUSAL_LM"
    run, ran = summary.get("setup", {}), train.get("settings") or {}
    dpo = train.get("method") == "dpo"  # models/dpo (DPO's train.json) or models/ppo
    method = "DPO" if dpo else "PPO"
    head = "" if dpo else " and PPO's value head"  # DPO trains none
    base, local = meta["base_model"], is_local(meta["base_model"])
    front = {**({} if local else {"base_model": base}),  # the Hub wants an id here: a local path is named below
             "library_name": "peft",
             "pipeline_tag": "text-generation" if causal else "text2text-generation",
             "tags": ["trl", "dpo" if dpo else "ppo", "lora", "detoxification", "rlhf", "dvc"]}
    if not is_local(data_source):  # a Hub dataset id
        front["datasets"] = [data_source]
    conf = f"{summary['confidence']:.0%}"
    rows = [f"| {label} | {ci(summary[key])} |" for key, label in HEADLINE if key in summary]
    rows += [f"| Judge {name}: toxicity | {ci(m['toxicity'])} |" for name, m in summary.get("judges", {}).items()]
    crossed = crossed_guards(summary["guards"])
    na = [name for name, c in summary["guards"].items() if c == NA]
    lines = [
        "---", yaml.safe_dump(front, sort_keys=False).strip(), "---", "",
        f"# {meta['base_model'].rstrip('/').split('/')[-1]}, detoxified with {method}", "",
        ("A LoRA adapter trained with DPO (TRL's DPOTrainer, on preference pairs ranked by the reward model from the "
         "starting policy's own samples; the starting policy is the reference) to make " if dpo else
         "A LoRA adapter trained with PPO (TRL, value head, KL penalty against the frozen starting policy) to make ")
        + 
        f"`{meta['base_model']}` less toxic, by the reproducible DVC pipeline of this repository.", "",
        "## Model description", "",
        (f"- Base model: a local folder, `{base}` (not on the Hub, so the metadata above has no base_model)"
         if local else f"- Base model: `{base}` (revision `{meta.get('revision')}`)")
        + (", with a starting LoRA adapter (`start_adapter/`, from the sft stage) merged before PPO"
           if meta.get("start_adapter") else ""),
        f"- Trained: the LoRA weights (r = {ran.get('lora_r')}){head}, "
        f"{train.get('trainable_parameters') or 0:,} of {train.get('total_parameters') or 0:,} parameters",
        f"- Reward: {run.get('reward_definition') or run.get('reward', '?')}", "",
        "## Training data", "",
        f"Prompts from `{data_source}` (the pipeline's train split); evaluated on {summary['num_prompts']} held-out "
        f"prompts, k = {summary['samples_per_prompt']} samples each.", "",
        "## Training procedure", "",
        (f"DPO ran {train.get('steps_done')} optimizer steps on {train.get('pairs')} preference pairs" if dpo else
         f"PPO ran {train.get('steps_done')} of {ran.get('max_steps', '?')} steps") +
        (f", stopped early at step {train.get('early_stop_step')} (KL above ppo.max_kl)" if train.get("early_stopped")
         else "") + ".", "",
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
        "```python", *usage(meta, causal), "```", "",
        ("" if dpo else "`value_head.safetensors` is PPO's value head, needed only to continue training.")
        + (" With the starting adapter merged, `with model.disable_adapter():` gives the starting policy, "
           "which was PPO's reference." if meta.get("start_adapter") else
           " `with model.disable_adapter():` gives the base model, which was PPO's reference."), "",
        "## Limitations", "",
        "Toxicity is measured by classifiers, which miss what they were not trained on; check the judges and the "
        "guards above, and read the samples in the pipeline's report before relying on this model.", "",
    ]
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--policy", required=True, help="the detox stage's adapter folder")
    parser.add_argument("--summary", required=True, help="the report stage's metrics/summary.json")
    parser.add_argument("--train", required=True, help="the training stage's train.json (metrics/detox/train.json)")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()

    params = load_params()
    policy = Path(args.policy)
    meta = read_policy_meta(policy)  # a clear error for a folder the detox stage did not write
    summary, train = read_json(args.summary), read_json(args.train)
    adapter = read_json(policy / "adapter_config.json")
    card = model_card(meta, adapter, summary, train, params.data.source)
    with atomic_dir(args.out) as tmp:
        shutil.copytree(policy, tmp, dirs_exist_ok=True)
        write_text(tmp / "README.md", card)
    log.info("wrote %s: the adapter and its model card (README.md)", args.out)


if __name__ == "__main__":
    run_stage(main)
