"""GPU smoke check of the detox stage's compiled rollouts (compute.compile_generation: true).

    python bench/gpu_rollouts.py --device cuda

The pipeline's shape, on the tiny pair: one static KV cache sized for output_max_length - 1, every
step drawing its own response length below it, prompts padded to the longest train prompt, then a
PPO step. Checks that each response respects its length, that every reward, KL and loss is finite, and
prints each step's seconds: after the first step (the compilation) they should stay flat, i.e. no
recompilation when the drawn length changes. Exits non-zero on a failed check.
"""
import argparse
import math
import sys
import tempfile
import time
from pathlib import Path

from detoxkit.io import load_script  # pip install -e . (the README's commands)

ROOT = Path(__file__).resolve().parents[1]
load_script(ROOT / "tools/make_tiny.py")  # importable as make_tiny from here on


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cuda")
    parser.add_argument("--lengths", type=int, nargs="+", default=[24, 9, 31, 16, 5, 28])
    args = parser.parse_args()

    import torch
    from make_tiny import build_all

    from detoxkit.settings import ComputeSettings, GenerationSettings, LoraSettings, PolicySettings, PPOSettings
    from detoxkit.generation import static_shape
    from detoxkit.models import attach_lora, load_policy
    from detoxkit.ppo_engine import PPOEngine

    cap = 32  # output_max_length - 1 with output_max_length 33
    with tempfile.TemporaryDirectory() as tmp:
        build_all(Path(tmp))
        compute = ComputeSettings(device=args.device, dtype="auto", compile_generation=True)
        model, tok, device = load_policy(PolicySettings(model=f"{tmp}/policy", revision=None, adapter=None,
                                                        allow_pickle=False), compute, None)
        gen = GenerationSettings(min_length=5, top_k=0, top_p=1.0, do_sample=True, output_min_length=4,
                                 output_max_length=cap + 1, batch_size=8)
        ppo = PPOSettings(learning_rate=1e-3, batch_size=8, mini_batch_size=4, epochs=1, max_steps=len(args.lengths),
                          init_kl_coef=0.2, adaptive_kl=True, target_kl=6.0, horizon=10000, max_kl=1e9,
                          checkpoint_every=0, enabled=True, lora=None)
        texts = [f"Summarize: #Person1#: shall we meet at {i} o'clock? " * (1 + i % 5) for i in range(8)]
        queries = [torch.tensor(q) for q in tok(texts)["input_ids"]]
        static = static_shape(True, model, [q.tolist() for q in queries], cap)
        static = static or (max(len(q) for q in queries), cap)  # CPU dry run: the static cache, uncompiled
        print(f"device {device}, dtype {model.dtype}, static shape {static}", flush=True)
        engine = PPOEngine(attach_lora(model, LoraSettings(r=4, alpha=8, dropout=0.05, target_modules=["q", "v"])),
                           tok, ppo, gen, seed=0, cpu=device.type == "cpu", static=static)
        failures = []
        for step, n in enumerate(args.lengths):
            torch.manual_seed(step)
            t = time.perf_counter()
            responses = engine.generate([q.to(device) for q in queries], n)
            rewards = torch.randn(len(responses)).tolist()
            stats = engine.step([q.to(device) for q in queries], responses, rewards)
            seconds = time.perf_counter() - t
            longest = max(len(r) for r in responses) - 1  # minus the decoder start token
            values = [stats["objective/kl"], stats["ppo/loss/total"]]
            print(f"step {step}: max_new_tokens {n:3d}, longest response {longest:3d}, {seconds:6.2f} s, "
                  f"kl {values[0]:.4f}, loss {values[1]:.4f}", flush=True)
            if longest > n or not all(map(math.isfinite, values)):
                failures.append(step)
    if failures:
        sys.exit(f"FAILED at steps {failures}")
    print("compiled rollouts: OK")


if __name__ == "__main__":
    main()
