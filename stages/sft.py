"""Stage `sft` (Lab 2): LoRA instruction tuning of the policy on the train split, before detox.

    python stages/sft.py --data data/prepared --out models/sft --metrics metrics/sft.json --live metrics/sft_train

Runs only when policy.adapter is `sft`; otherwise it writes a constant placeholder in well under a
second (no model is loaded), so the DAG downstream is unchanged and stays cached.
ROUGE-1/2/L of the plain and the tuned policy on the same test prompts (greedy) go to --metrics.
"""
import argparse
import dataclasses
import logging
import shutil
from pathlib import Path

from detoxkit.config import load_params
from detoxkit.io import atomic_dir, run_stage, write_json, write_placeholder, write_text

log = logging.getLogger("detox.sft")
SKIPPED_NOTE = "The sft stage was skipped: policy.adapter is not `sft`, so no adapter was trained.\n"


def rouge_of(model, tokenizer, rows, device, sft, seed):
    from detoxkit.evaluation import Sampler, rouge

    _, texts = Sampler(model, tokenizer, device, seed, sft.batch_size).texts(rows, sft.eval_max_new_tokens, "rouge",
                                                                             do_sample=False)
    return {k: float(v.mean()) for k, v in rouge(texts, list(rows["summary"])).items()}


def train(params, data_dir, out_dir, live_dir):
    import torch
    from dvclive import Live
    from transformers import DataCollatorForSeq2Seq, Trainer, TrainingArguments

    from detoxkit.config import check_split_sizes
    from detoxkit.data import load_prepared, take, tokenize_for_sft
    from detoxkit.generation import is_causal
    from detoxkit.models import (attach_lora, check_lora_targets, check_policy_config, load_policy, save_adapter,
                                 trainable_parameters)
    from detoxkit.trainer_log import attach_progress
    from detoxkit.training import log_row

    sft = params.sft
    check_lora_targets(check_policy_config(params.policy), sft.lora, "sft.lora")  # before any weights load
    data = load_prepared(data_dir)
    check_split_sizes(params, len(data["train"]), len(data["test"]), str(data_dir),
                      keys=("sft.batch_size", "sft.eval_samples"))
    rows = take(data["test"], sft.eval_samples, "sft.eval_samples")
    torch.manual_seed(params.seed)
    plain = dataclasses.replace(params.policy, adapter=None)  # SFT starts from the plain model
    model, tokenizer, device = load_policy(plain, params.compute, None)
    before = rouge_of(model, tokenizer, rows, device, sft, params.seed)
    model = attach_lora(model, sft.lora, "sft.lora")
    trainable, total = trainable_parameters(model)
    log.info("SFT trainable parameters (LoRA): %d of %d (%.2f%%)", trainable, total, 100 * trainable / total)

    work = Path(out_dir).with_name(".sft-trainer")  # Trainer scratch space (nothing is saved there)
    shutil.rmtree(work, ignore_errors=True)
    args = TrainingArguments(
        output_dir=str(work), learning_rate=sft.learning_rate, num_train_epochs=sft.epochs, max_steps=sft.max_steps,
        per_device_train_batch_size=sft.batch_size, logging_steps=sft.logging_steps, save_strategy="no",
        report_to="none", seed=params.seed, bf16=model.dtype == torch.bfloat16, use_cpu=device.type == "cpu",
        disable_tqdm=True, remove_unused_columns=False,  # Trainer's bar would print each logged step's dict: ours below
    )
    # The loss curve and the adapter appear whole when training ends, or not at all.
    with atomic_dir(live_dir) as live_tmp, atomic_dir(out_dir) as out_tmp:
        live = Live(str(live_tmp), dvcyaml=False, save_dvc_exp=False)

        train_rows = tokenize_for_sft(data["train"], tokenizer, sft.max_target_tokens, is_causal(model))
        # transformers' seq2seq collator pads inputs (on the tokenizer's side: right) and labels (with -100)
        trainer = Trainer(model=model, args=args, train_dataset=train_rows,
                          data_collator=DataCollatorForSeq2Seq(tokenizer, model=model))
        attach_progress(trainer, "SFT", {"loss": "train/loss"}, lambda step, row: log_row(live, {"step": step, **row}),
                        needs="loss")  # the loss curve to DVCLive, a bar with the time left, no printed dicts
        result = trainer.train()
        live.end()
        shutil.rmtree(work, ignore_errors=True)
        model.eval()
        after = rouge_of(model, tokenizer, rows, device, sft, params.seed)
        save_adapter(model, out_tmp)  # adapter_config.json byte-identical on reruns; a full disk in one line
    return {"enabled": True, "eval_samples": len(rows), "train_loss": result.training_loss,
            "steps": result.global_step, "rouge_before": before, "rouge_after": after,
            "rouge_gain": {k: after[k] - before[k] for k in before}}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--metrics", required=True)
    parser.add_argument("--live", required=True)
    args = parser.parse_args()

    params = load_params()
    if params.policy.adapter != "sft":
        write_placeholder(args.out, SKIPPED_NOTE)
        with atomic_dir(args.live) as tmp:  # the loss curve's header alone: `dvc plots show` and DVC's outputs
            write_text(tmp / "plots/metrics/train/loss.tsv", "step\tloss\n")  # accept it (an empty folder fails)
        write_json(args.metrics, {"enabled": False})
        log.info("policy.adapter is %r: sft skipped", params.policy.adapter)
        return
    metrics = train(params, args.data, args.out, args.live)
    write_json(args.metrics, metrics)
    log.info("ROUGE-L %.4f -> %.4f after %d SFT steps", metrics["rouge_before"]["rougeL"],
             metrics["rouge_after"]["rougeL"], metrics["steps"])


if __name__ == "__main__":
    run_stage(main)
