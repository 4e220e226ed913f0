"""Benchmark: the lab's per-sample loops against our batched detox and evaluation code, same machine and model.

    python bench/bench_detox.py --size tiny                       # CPU, tiny model (a few minutes)
    python bench/bench_detox.py --size flan-t5-base --batch 16    # GPU, FLAN-T5-base architecture
    python bench/bench_detox.py --size flan-t5-base --batch 64 --phases ours_ppo ours_eval

Phases (each in a fresh subprocess, so peak memory is per phase):
  lab_ppo    (a) one generate() per prompt, per-sample classifier calls, then PPOTrainer.step
  ours_ppo   (b) our detox stage's rollout: PPOEngine.generate (batched) + RewardScorer + step
  lab_eval   (c) one generate() and one classifier call per sample (the lab's evaluate_toxicity)
  ours_eval  (d) our evaluation: batched generate_texts + batched RewardScorer
  ours_ppo_refcopy  (b) with a separate frozen reference model instead of the disabled adapter
Generation lengths are fixed (min_new_tokens = max_new_tokens = --new-tokens) so ratios measure code,
not sampled lengths. Models are built from configs with random weights (no Hub): timing needs shapes,
not skills. Prompts come from --data (DialogSum jsonl) when given, else synthetic dialogues.
"""
import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "stages"), str(ROOT / "tools")]
PHASES = ["lab_ppo", "ours_ppo", "lab_eval", "ours_eval", "ours_ppo_refcopy"]
FLAN_T5_BASE = dict(d_model=768, d_kv=64, d_ff=2048, num_layers=12, num_decoder_layers=12, num_heads=12,
                    vocab_size=32128, feed_forward_proj="gated-gelu", tie_word_embeddings=False)
ROBERTA_BASE = dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072)


def build_models(out: Path, size: str, data: str | None):
    """Tiny pair from make_tiny; for flan-t5-base, the same tokenizers with base-sized random models."""
    import torch
    from make_tiny import build_all
    from transformers import (AutoConfig, AutoModelForSeq2SeqLM, AutoModelForSequenceClassification,
                              RobertaForSequenceClassification, T5ForConditionalGeneration)

    build_all(out)
    if size == "flan-t5-base":
        torch.manual_seed(0)
        pc = AutoConfig.from_pretrained(out / "policy")
        pc.update(FLAN_T5_BASE)
        T5ForConditionalGeneration(pc).save_pretrained(out / "policy")
        rc = AutoConfig.from_pretrained(out / "reward")
        rc.update({**ROBERTA_BASE, "vocab_size": 50265, "max_position_embeddings": 514})
        RobertaForSequenceClassification(rc).save_pretrained(out / "reward")
        del AutoModelForSeq2SeqLM, AutoModelForSequenceClassification


def prompts(args, template, n):
    from make_tiny import make_dialogues

    if args.data:
        rows = [json.loads(line) for line in Path(args.data).read_text().splitlines()]
        dialogues = [r["dialogue"] for r in rows if 200 < len(r["dialogue"]) <= 1000]
    else:
        dialogues = [r["dialogue"] for r in make_dialogues(n, 1)]
    return [template.format(dialogue=d) for d in (dialogues * (n // len(dialogues) + 1))[:n]]


def settings(models: Path, args):
    from detoxkit.config import (ComputeSettings, GenerationSettings, LoraSettings, PolicySettings, PPOSettings,
                                 RewardSettings, load_params)

    p = load_params(["prompt"], ROOT / "params.yaml")
    device = "cuda" if args.device == "cuda" else "cpu"
    return dict(
        template=p.prompt.template,
        policy=PolicySettings(model=str(models / "policy"), revision=None, adapter=None, allow_pickle=False),
        reward=RewardSettings(model=str(models / "reward"), revision=None, not_hate_label="nothate", hate_label="hate",
                              include_prompt=True, batch_size=args.batch, allow_pickle=False),
        compute=ComputeSettings(device=device, dtype="auto"),
        lora=LoraSettings(r=32, alpha=32, dropout=0.05, target_modules=["q", "v"]),
        gen=GenerationSettings(min_length=5, top_k=0, top_p=1.0, do_sample=True, output_min_length=args.new_tokens,
                               output_max_length=args.new_tokens + 1, batch_size=args.batch),
        ppo=PPOSettings(learning_rate=1.41e-5, batch_size=args.batch, mini_batch_size=min(4, args.batch), epochs=1,
                        max_steps=args.steps, init_kl_coef=0.2, adaptive_kl=True, target_kl=6.0, horizon=10000,
                        max_kl=1e9, checkpoint_every=0),
    )


def run_phase(phase: str, args) -> dict:
    import torch

    from detoxkit.generation import sampling_kwargs
    from detoxkit.models import attach_lora, load_policy
    from detoxkit.scoring import build_scorer

    s = settings(Path(args.models), args)
    scorer = build_scorer(s["reward"], s["compute"])
    model, tok, device = load_policy(s["policy"], s["compute"], None)
    fixed = {"min_new_tokens": args.new_tokens, "max_new_tokens": args.new_tokens}
    sample = {**sampling_kwargs(s["gen"]), **fixed}
    # one extra batch of prompts for the untimed warm-up pass (kernels, allocator, lazy init)
    texts = prompts(args, s["template"], args.batch * (args.steps + 1))
    ids = tok(texts, truncation=True, max_length=512)["input_ids"]
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    if phase.endswith("eval"):
        from detoxkit.evaluation import generate_texts

        def work(q_ids, q_txt):
            if phase == "lab_eval":
                for q, p in zip(q_ids, q_txt):
                    with torch.no_grad():
                        out = model.generate(input_ids=torch.tensor([q], device=device), **sample)
                    scorer.score([p], [tok.decode(out[0], skip_special_tokens=True)])  # one call per sample
            else:
                _, out = generate_texts(model, tok, {"input_ids": q_ids}, args.batch, device, 0, "eval", **sample)
                scorer.score(q_txt, out)
    else:
        from detoxkit.ppo_engine import PPOEngine

        engine = PPOEngine(attach_lora(model, s["lora"]), tok, s["ppo"], s["gen"], seed=0)
        if phase == "ours_ppo_refcopy":  # a full frozen copy as reference instead of the disabled adapter
            import contextlib
            import copy

            from trl import AutoModelForSeq2SeqLMWithValueHead
            ref = AutoModelForSeq2SeqLMWithValueHead.from_pretrained(
                copy.deepcopy(engine.unwrapped.pretrained_model.get_base_model())).to(device).eval()
            engine.trainer.ref_model, engine.trainer.is_peft_model = ref, False
            engine.trainer.optional_peft_ctx = contextlib.nullcontext

        def work(q_ids, q_txt):
            for start in range(0, len(q_ids), args.batch):
                b_txt = q_txt[start:start + args.batch]
                queries = [torch.tensor(q, device=device) for q in q_ids[start:start + args.batch]]
                if phase == "lab_ppo":
                    responses = []
                    for q in queries:  # the lab: one generate() per prompt
                        with torch.no_grad():
                            responses.append(engine.unwrapped.generate(input_ids=q.unsqueeze(0), **sample)[0])
                    out = tok.batch_decode(responses, skip_special_tokens=True)
                    rewards = [scorer.score([p], [r])[0][0] for p, r in zip(b_txt, out)]  # pipeline, batch 1
                else:
                    responses = engine.generate(queries, args.new_tokens)
                    rewards, _ = scorer.score(b_txt, tok.batch_decode(responses, skip_special_tokens=True))
                engine.step(queries, responses, rewards)

    work(ids[:args.batch], texts[:args.batch])  # warm-up, untimed
    ids, texts = ids[args.batch:], texts[args.batch:]
    samples = len(ids)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    sync()
    t = time.perf_counter()
    work(ids, texts)
    sync()
    seconds = time.perf_counter() - t
    peak = (torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    return {"phase": phase, "samples": samples, "seconds": seconds, "samples_per_s": samples / seconds,
            "peak_mib": peak, "peak_kind": "cuda_max_allocated" if device.type == "cuda" else "process_max_rss",
            "device": torch.cuda.get_device_name() if device.type == "cuda" else f"cpu x{torch.get_num_threads()}",
            "dtype": str(model.dtype)}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=["tiny", "flan-t5-base"], default="tiny")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--batch", type=int, default=16, help="PPO batch size and generation batch (lab: 16)")
    parser.add_argument("--steps", type=int, default=3, help="PPO steps timed; evaluation uses batch x steps samples")
    parser.add_argument("--new-tokens", type=int, default=64, help="fixed response length")
    parser.add_argument("--data", help="DialogSum jsonl for real prompts (e.g. ../shared/data/dialogsum/...)")
    parser.add_argument("--phases", nargs="+", default=PHASES, choices=PHASES)
    parser.add_argument("--out", help="write the results as JSON here")
    parser.add_argument("--phase", help=argparse.SUPPRESS)
    parser.add_argument("--models", help=argparse.SUPPRESS)
    args = parser.parse_args()

    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    if args.phase:  # child process: run one phase, print its JSON
        print("RESULT " + json.dumps(run_phase(args.phase, args)), flush=True)
        return
    with tempfile.TemporaryDirectory() as tmp:
        build_models(Path(tmp), args.size, args.data)
        results = {}
        base = [a for a in sys.argv[1:] if a != "--phases" and a not in PHASES]
        for phase in args.phases:
            proc = subprocess.run([sys.executable, __file__, *base, "--phase", phase, "--models", tmp],
                                  capture_output=True, text=True)
            line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
            if proc.returncode or not line:
                sys.exit(f"phase {phase} failed:\n{proc.stderr[-3000:]}")
            results[phase] = json.loads(line[0][7:])
            r = results[phase]
            print(f"{phase:18s} {r['samples']:4d} samples {r['seconds']:8.2f} s {r['samples_per_s']:8.2f} samples/s "
                  f"peak {r['peak_mib']:8.0f} MiB ({r['peak_kind']})", flush=True)
    ratios = {}
    if "lab_ppo" in results and "ours_ppo" in results:
        ratios["ppo_speedup_b_over_a"] = results["ours_ppo"]["samples_per_s"] / results["lab_ppo"]["samples_per_s"]
    if "lab_eval" in results and "ours_eval" in results:
        ratios["eval_speedup_d_over_c"] = results["ours_eval"]["samples_per_s"] / results["lab_eval"]["samples_per_s"]
    if "ours_ppo_refcopy" in results and "ours_ppo" in results:
        ratios["ref_copy_extra_peak_mib"] = results["ours_ppo_refcopy"]["peak_mib"] - results["ours_ppo"]["peak_mib"]
    for k, v in ratios.items():
        print(f"{k}: {v:.2f}")
    device = next(iter(results.values()))["device"]
    print(f"device: {device}, size: {args.size}, batch {args.batch}, {args.new_tokens} new tokens, steps {args.steps}")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps({"args": vars(args), "results": results, "ratios": ratios}, indent=2))


if __name__ == "__main__":
    main()
