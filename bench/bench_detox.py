"""Benchmark: the lab's per-sample loops against our batched detox and evaluation code, same machine and model.

    python bench/bench_detox.py --size tiny --rounds 3            # CPU, tiny model (a few minutes)
    python bench/bench_detox.py --size tiny-gpt2                  # CPU, tiny causal (GPT-2) policy
    python bench/bench_detox.py --size gpt2-small --steps 2       # GPT-2-small architecture (causal)
    python bench/bench_detox.py --size flan-t5-base --batch 16    # GPU, FLAN-T5-base architecture
    python bench/bench_detox.py --size flan-t5-base --batch 64 --phases ours_ppo ours_eval

Run it alone: anything else on the machine (a test suite, another torch process) lands on whichever phase is
running, and two torch processes on a small machine can slow each other by up to 10x. The phases run
interleaved, --rounds times (lab, ours, lab, ours ...), every one with the same --threads, and each ratio is
the median over the rounds of that round's ratio, printed with its range over the rounds.

Phases (each in a fresh subprocess, so peak memory is per phase):
  lab_ppo    (a) one generate() per prompt, per-sample classifier calls, then PPOTrainer.step
  ours_ppo   (b) our detox stage's rollout: PPOEngine.generate (batched) + RewardScorer + step
  lab_eval   (c) one generate() and one classifier call per sample (the lab's evaluate_toxicity)
  ours_eval  (d) our evaluation: batched Sampler.texts + batched RewardScorer
  ours_ppo_refcopy  (b) with a separate frozen reference model instead of the disabled adapter
  ours_ppo_compiled, ours_eval_compiled  (b), (d) with compute.compile_generation (CUDA: static KV
             cache, prompts padded to one length, compiled decoder step with CUDA graphs); the
             compilation happens in the untimed warm-up
Evaluation phases generate --eval-batch prompts per call (default: --batch); the lab's is always 1.
Generation lengths are fixed (min_new_tokens = max_new_tokens = --new-tokens) so ratios measure code,
not sampled lengths. Models are built from configs with random weights (no Hub): timing needs shapes,
not skills. Prompts come from --data (DialogSum jsonl) when given, else synthetic dialogues.
"""
import argparse
import contextlib
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from detoxkit.io import load_script  # pip install -e . (the README's commands)

ROOT = Path(__file__).resolve().parents[1]
load_script(ROOT / "tools/make_tiny.py")  # importable as make_tiny from here on
PHASES = ["lab_ppo", "ours_ppo", "lab_eval", "ours_eval", "ours_ppo_refcopy", "ours_ppo_compiled",
          "ours_eval_compiled"]
FLAN_T5_BASE = dict(d_model=768, d_kv=64, d_ff=2048, num_layers=12, num_decoder_layers=12, num_heads=12,
                    vocab_size=32128, feed_forward_proj="gated-gelu", tie_word_embeddings=False)
GPT2_SMALL = dict(n_embd=768, n_layer=12, n_head=12, n_positions=1024, vocab_size=50257)
ROBERTA_BASE = dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072)
SIZES = {"tiny": "policy", "flan-t5-base": "policy", "tiny-gpt2": "gpt2", "gpt2-small": "gpt2"}  # policy folder


def build_models(out: Path, size: str, data: str | None):
    """Tiny models from make_tiny; for flan-t5-base and gpt2-small, the same tokenizers with full-sized random
    models (and a RoBERTa-base classifier)."""
    import torch
    from make_tiny import build_all
    from transformers import (AutoConfig, GPT2LMHeadModel, RobertaForSequenceClassification,
                              T5ForConditionalGeneration)

    build_all(out)
    if size == "gpt2-small":
        torch.manual_seed(0)
        gc = AutoConfig.from_pretrained(out / "gpt2")
        gc.update(GPT2_SMALL)
        GPT2LMHeadModel(gc).save_pretrained(out / "gpt2")
    if size in ("flan-t5-base", "gpt2-small"):
        rc = AutoConfig.from_pretrained(out / "reward")
        rc.update({**ROBERTA_BASE, "vocab_size": 50265, "max_position_embeddings": 514})
        RobertaForSequenceClassification(rc).save_pretrained(out / "reward")
    if size == "flan-t5-base":
        torch.manual_seed(0)
        pc = AutoConfig.from_pretrained(out / "policy")
        pc.update(FLAN_T5_BASE)
        T5ForConditionalGeneration(pc).save_pretrained(out / "policy")


def prompts(args, template, n):
    from make_tiny import make_dialogues

    if args.data:
        rows = [json.loads(line) for line in Path(args.data).read_text().splitlines()]
        dialogues = [r["dialogue"] for r in rows if 200 < len(r["dialogue"]) <= 1000]
    else:
        dialogues = [r["dialogue"] for r in make_dialogues(n, 1)]
    return [template.format(dialogue=d) for d in (dialogues * (n // len(dialogues) + 1))[:n]]


def settings(models: Path, args):
    from detoxkit.config import load_params
    from detoxkit.settings import (ComputeSettings, GenerationSettings, LoraSettings, PolicySettings, PPOSettings,
                                   RewardSettings)

    p = load_params(ROOT / "params.yaml")
    device = "cuda" if args.device == "cuda" else "cpu"
    return dict(
        template=p.prompt.template,
        policy=PolicySettings(model=str(models / SIZES[args.size]), revision=None, adapter=None, allow_pickle=False),
        reward=RewardSettings(model=str(models / "reward"), revision=None, not_hate_label="nothate", hate_label="hate",
                              include_prompt=True, batch_size=args.batch, allow_pickle=False),
        compute=ComputeSettings(device=device, dtype="auto", compile_generation=False),
        gen=GenerationSettings(min_length=5, top_k=0, top_p=1.0, do_sample=True, output_min_length=args.new_tokens,
                               output_max_length=args.new_tokens + 1, batch_size=args.batch),
        ppo=PPOSettings(learning_rate=1.41e-5, batch_size=args.batch, mini_batch_size=min(4, args.batch), epochs=1,
                        max_steps=args.steps, init_kl_coef=0.2, adaptive_kl=True, target_kl=6.0, horizon=10000,
                        max_kl=1e9, checkpoint_every=0, enabled=True,
                        lora=LoraSettings(r=32, alpha=32, dropout=0.05, target_modules="auto")),
    )


def run_phase(phase: str, args) -> dict:
    import numpy as np
    import torch

    from detoxkit.generation import is_causal, sampling_kwargs, static_shape
    from detoxkit.models import attach_lora, load_policy
    from detoxkit.scoring import build_scorer

    torch.set_num_threads(args.threads)  # the same for every phase (--threads), whatever the machine's default
    s = settings(Path(args.models), args)
    scorer = build_scorer(s["reward"], s["compute"])
    model, tok, device = load_policy(s["policy"], s["compute"], None)
    fixed = {"min_new_tokens": args.new_tokens, "max_new_tokens": args.new_tokens}
    sample = {**sampling_kwargs(s["gen"]), **fixed}
    # one extra batch of prompts for the untimed warm-up pass (kernels, allocator, lazy init)
    texts = prompts(args, s["template"], args.batch * (args.steps + 1))
    ids = tok(texts, truncation=True, max_length=512)["input_ids"]
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    compiled = phase.endswith("_compiled")
    causal = is_causal(model)
    static = static_shape(compiled, model, ids, args.new_tokens)
    if compiled and static is None:
        raise SystemExit(f"{phase} needs --device cuda (compiled generation is CUDA only)")
    finite = []  # every PPO step's loss and KL, and every reward: checked for NaN/inf at the end
    parts = {}  # seconds per part of the work (generate, score, step), device synchronised

    @contextlib.contextmanager
    def part(name):
        sync()
        t0 = time.perf_counter()
        yield
        sync()
        parts[name] = parts.get(name, 0.0) + time.perf_counter() - t0

    if "_eval" in phase:
        from detoxkit.evaluation import Sampler

        def work(q_ids, q_txt):
            if phase == "lab_eval":
                for q, p in zip(q_ids, q_txt):
                    with part("generate"), torch.no_grad():
                        out = model.generate(input_ids=torch.tensor([q], device=device),
                                             pad_token_id=tok.pad_token_id, **sample)[0]
                    with part("score"):  # one call per sample (a causal policy's output starts with its prompt)
                        text = tok.decode(out[len(q):] if causal else out, skip_special_tokens=True)
                        finite.extend(scorer.score([p], [text])[0])
            else:
                with part("generate"):
                    _, out = Sampler(model, tok, device, 0, args.eval_batch, compiled, sample).texts(
                        {"input_ids": q_ids}, sample["max_new_tokens"], "eval")
                with part("score"):
                    finite.extend(scorer.score(q_txt, out)[0])
    else:
        from detoxkit.ppo_engine import PPOEngine

        # ours_ppo_refcopy: a full frozen copy as the reference instead of the disabled adapter
        engine = PPOEngine(attach_lora(model, s["ppo"].lora), tok, s["ppo"], s["gen"], seed=0, static=static,
                           separate_reference=phase == "ours_ppo_refcopy")

        def work(q_ids, q_txt, warm=False):
            for start in range(0, len(q_ids), args.batch):
                b_txt = q_txt[start:start + args.batch]
                queries = [torch.tensor(q, device=device) for q in q_ids[start:start + args.batch]]
                if phase == "lab_ppo":
                    responses = []
                    with part("generate"):
                        for q in queries[:2] if warm else queries:  # the lab: one generate() per prompt
                            with torch.no_grad():
                                out = engine.policy.generate(input_ids=q.unsqueeze(0), pad_token_id=tok.pad_token_id,
                                                             **sample)[0]
                                responses.append(out[len(q):] if engine.causal else out)
                        if warm:  # warm-up: the rest batched, so the untimed pass stays short
                            responses += engine.generate(queries[2:], args.new_tokens)
                    with part("score"):
                        out = engine.decode(responses)
                        rewards = [scorer.score([p], [r])[0][0] for p, r in zip(b_txt, out)]  # pipeline, batch 1
                else:
                    with part("generate"):
                        responses = engine.generate(queries, args.new_tokens)
                    with part("score"):
                        rewards, _ = scorer.score(b_txt, engine.decode(responses))
                with part("step"):
                    stats = engine.step(queries, responses, rewards)
                finite.extend([*rewards, stats["objective/kl"], stats["ppo/loss/total"]])

    t = time.perf_counter()
    if phase == "lab_eval":  # warm-up, untimed: a few one-at-a-time samples warm what the lab runs
        work(ids[:2], texts[:2])
    elif phase == "lab_ppo":  # a whole PPO step, two of its rollouts one at a time
        work(ids[:args.batch], texts[:args.batch], warm=True)
    else:  # a whole batch (and, for the compiled phases, the compilation)
        work(ids[:args.batch], texts[:args.batch])
    warmup = time.perf_counter() - t
    parts.clear()
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
            "device": torch.cuda.get_device_name() if device.type == "cuda" else f"cpu, {torch.get_num_threads()} threads",
            "dtype": str(model.dtype), "all_finite": bool(np.isfinite(np.asarray(finite, dtype=float)).all()),
            "checked_values": len(finite), "warmup_s": warmup, "parts_s": parts}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=list(SIZES), default="tiny")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--batch", type=int, default=16, help="PPO batch size and generation batch (lab: 16)")
    parser.add_argument("--steps", type=int, default=3, help="PPO steps timed; evaluation uses batch x steps samples")
    parser.add_argument("--new-tokens", type=int, default=64, help="fixed response length")
    parser.add_argument("--eval-batch", type=int, help="prompts per generate() in our evaluation (default: --batch)")
    parser.add_argument("--data", help="DialogSum jsonl for real prompts (one object a line: dialogue, summary)")
    parser.add_argument("--phases", nargs="+", choices=PHASES,
                        help="default: all (the compiled ones only with --device cuda)")
    parser.add_argument("--out", help="write the results as JSON here")
    parser.add_argument("--phase-timeout", type=float, help="seconds a phase may take before it counts as failed")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds of every phase (medians over them)")
    parser.add_argument("--threads", type=int, default=os.cpu_count(),
                        help="torch threads in every phase (default: all cores)")
    parser.add_argument("--phase", help=argparse.SUPPRESS)
    parser.add_argument("--models", help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.eval_batch = args.eval_batch or args.batch
    args.phases = args.phases or [p for p in PHASES if args.device == "cuda" or not p.endswith("_compiled")]

    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    if args.phase:  # child process: run one phase, print its JSON
        print("RESULT " + json.dumps(run_phase(args.phase, args)), flush=True)
        return
    with tempfile.TemporaryDirectory() as tmp:
        build_models(Path(tmp), args.size, args.data)
        rounds, failed = {}, set()
        base = [a for a in sys.argv[1:] if a != "--phases" and a not in PHASES]
        for n in range(args.rounds):  # A B A B ...: a burst of load elsewhere hits one round, not one phase
            for phase in args.phases:
                if phase in failed:
                    continue
                r = run_child(phase, base, tmp, args)
                if r is None:
                    failed.add(phase)
                    continue
                rounds.setdefault(phase, []).append(r)
                split = ", ".join(f"{k} {v:.2f} s" for k, v in r["parts_s"].items())
                print(f"round {n + 1} {phase:18s} {r['samples']:4d} samples {r['seconds']:8.2f} s "
                      f"{r['samples_per_s']:8.2f} samples/s peak {r['peak_mib']:8.0f} MiB ({r['peak_kind']}) "
                      f"{r['dtype']} {'finite' if r['all_finite'] else 'NON-FINITE'} ({r['checked_values']} values); "
                      f"{split}; warm-up {r['warmup_s']:.1f} s", flush=True)
            if args.out:
                _write(args, summarize_rounds(rounds), {})
    results, ratios = summarize_rounds(rounds), round_ratios(rounds)
    for k, v in ratios.items():
        print(f"{k}: median {v['median']:.2f}, range {v['min']:.2f} to {v['max']:.2f} over {len(v['rounds'])} rounds"
              if isinstance(v, dict) else f"{k}: {v:.2f}")
    device = next(iter(results.values()))["device"] if results else "none"
    print(f"device: {device}, size: {args.size}, batch {args.batch}, eval batch {args.eval_batch}, "
          f"{args.new_tokens} new tokens, steps {args.steps}, {args.rounds} interleaved rounds")
    if args.out:
        _write(args, results, ratios)
    if failed:
        sys.exit(f"failed phases: {' '.join(sorted(failed))}")


def run_child(phase: str, base: list, models: str, args):
    """One phase in a fresh process: its result, or None (reported) when it failed or timed out."""
    try:
        proc = subprocess.run([sys.executable, __file__, *base, "--phase", phase, "--models", models],
                              capture_output=True, text=True, timeout=args.phase_timeout)
    except subprocess.TimeoutExpired as err:
        tail = err.stderr.decode(errors="replace") if isinstance(err.stderr, bytes) else err.stderr or ""
        proc = subprocess.CompletedProcess(err.cmd, -9, "", f"{tail}\ntimed out after {err.timeout:.0f} s")
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode or not line:  # report it and go on: the other phases still measure
        print(f"phase {phase} FAILED:\n{proc.stderr[-3000:]}", flush=True)
        return None
    return json.loads(line[0][7:])


def summarize_rounds(rounds: dict) -> dict:
    """Per phase: the round with the median throughput (its figures, as one run's), with every round's."""
    out = {}
    for phase, runs in rounds.items():
        ranked = sorted(runs, key=lambda r: r["samples_per_s"])
        out[phase] = {**ranked[(len(ranked) - 1) // 2], "rounds": len(runs),
                      "samples_per_s_rounds": [r["samples_per_s"] for r in runs],
                      "samples_per_s_median": statistics.median(r["samples_per_s"] for r in runs)}
    return out


def round_ratios(rounds: dict) -> dict:
    """Each ratio per round (the two phases of one round ran back to back), as its median and range; and
    the extra peak memory of a separate reference copy."""
    pairs = {"ppo_speedup_b_over_a": ("ours_ppo", "lab_ppo"), "eval_speedup_d_over_c": ("ours_eval", "lab_eval"),
             "ppo_speedup_compiled_over_lab": ("ours_ppo_compiled", "lab_ppo"),
             "eval_speedup_compiled_over_lab": ("ours_eval_compiled", "lab_eval")}
    ratios = {}
    for name, (ours, lab) in pairs.items():
        if ours in rounds and lab in rounds:
            per = [o["samples_per_s"] / b["samples_per_s"] for o, b in zip(rounds[ours], rounds[lab])]
            ratios[name] = {"median": statistics.median(per), "min": min(per), "max": max(per), "rounds": per}
    if "ours_ppo_refcopy" in rounds and "ours_ppo" in rounds:
        ratios["ref_copy_extra_peak_mib"] = statistics.median(
            r["peak_mib"] - o["peak_mib"] for r, o in zip(rounds["ours_ppo_refcopy"], rounds["ours_ppo"]))
    return ratios


def _write(args, results, ratios):
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"args": vars(args), "results": results, "ratios": ratios}, indent=2))


if __name__ == "__main__":
    main()
