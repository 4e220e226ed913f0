"""A real model through the DAG: does PPO detoxify SmolLM2-135M-Instruct on toxic RealToxicityPrompts?

    python tools/real_models.py --out real/smollm2-135m-instruct        # once (about 30 s)
    python bench/real_detox.py --data ../shared/data/rtp/toxic.jsonl    # about 20 minutes on 2 CPU cores
    python bench/real_detox.py --data ... --steps 4 --prompts 20        # a quick look

The project is copied into a temporary git + DVC repository and `dvc repro` runs there with the
RealToxicityPrompts continuation setting (RTP below: prompt-only, the prompt continued as it is and the
continuation scored alone, about 20 new tokens), the real policy built by tools/real_models.py, the real
offensive-language classifier alt-profanity-check as the reward (a Python scorer), better-profanity's word
list as an independent judge, and best-of-N on. It prints before and after with confidence intervals, the
guards, and six before/after samples chosen by a rule fixed in advance: sample 0 of the first six test
prompts, in the order of the test split (never chosen by their scores).
"""
import argparse
import csv
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from detoxkit.io import load_script  # pip install -e . (the README's commands)

ROOT = Path(__file__).resolve().parents[1]
make_tiny = load_script(ROOT / "tools/make_tiny.py")  # its override_params: what `dvc exp run -S` does

# The RealToxicityPrompts continuation setting (docs/getting-started.md: "A real chat model on RealToxicityPrompts").
RTP = {
    "data.dialogue_column": "prompt.text", "data.summary_column": None, "data.filter": "challenging",
    "data.min_chars": 0, "data.max_chars": 1000, "data.max_prompt_tokens": 64,
    "prompt.template": "{dialogue}", "prompt.chat_template": False,  # continue the text, as RTP does
    "policy.revision": None, "policy.adapter": None,
    "reward.model": "python:profanity_check:predict_prob", "reward.include_prompt": False,
    "generation.output_min_length": 16, "generation.output_max_length": 25,  # about 20 new tokens
    "evaluation.max_new_tokens": 20,
    "evaluation.judges": [{"model": "python:detoxkit.text_scorers:better_profanity", "revision": None,
                           "toxic_label": None, "allow_pickle": False}],
}
# Sized for about 20 minutes on 2 CPU cores.
RUN = {"evaluation.num_samples": 100, "evaluation.samples_per_prompt": 4, "best_of_n.enabled": True,
       "best_of_n.n": 4, "ppo.learning_rate": 3.0e-4, "ppo.checkpoint_every": 10,
       "dpo.enabled": False}  # the figures below predate the DPO stages; DPO on this task is not measured yet
STEPS = 70  # PPO steps: about 10 s each here at batch 16
SHOWN = 6


def read_rows(path: Path) -> list:
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


def interval(m: dict) -> str:
    return (f"{m['before']:.3f} -> {m['after']:.3f}, difference {m['diff']:+.3f} "
            f"[{m['diff_ci_low']:+.3f}, {m['diff_ci_high']:+.3f}]")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared/data/rtp/toxic.jsonl")
    parser.add_argument("--model", type=Path, default=ROOT / "real/smollm2-135m-instruct")
    parser.add_argument("--steps", type=int, default=STEPS, help="PPO steps")
    parser.add_argument("--prompts", type=int, default=RUN["evaluation.num_samples"], help="test prompts")
    parser.add_argument("--set", nargs="*", default=[], help="more params.yaml overrides, key=value (YAML value)")
    parser.add_argument("--keep", type=Path, help="copy the run's repository here afterwards")
    args = parser.parse_args()
    if not (args.model / "config.json").is_file():
        sys.exit(f"{args.model} is not built; run: python tools/real_models.py --out {args.model}")
    if not args.data.is_file():
        sys.exit(f"{args.data} does not exist; give a RealToxicityPrompts jsonl with --data")

    with tempfile.TemporaryDirectory() as tmp:
        repo = Path(tmp) / "repo"
        repo.mkdir()
        for name in ("stages", "tools", "dvc.yaml", "params.yaml", ".gitignore", ".dvcignore"):
            (shutil.copytree if (ROOT / name).is_dir() else shutil.copy)(ROOT / name, repo / name)
        for cache in repo.rglob("__pycache__"):
            shutil.rmtree(cache)
        extra = {k: yaml.safe_load(v) for k, v in (item.split("=", 1) for item in args.set)}
        make_tiny.override_params(repo / "params.yaml", {
            **RTP, **RUN, "data.source": str(args.data.resolve()), "policy.model": str(args.model),
            "evaluation.num_samples": args.prompts, "ppo.max_steps": args.steps, **extra})
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "DVC_NO_ANALYTICS": "1", "GIT_AUTHOR_NAME": "bench",
               "GIT_AUTHOR_EMAIL": "bench@localhost", "GIT_COMMITTER_NAME": "bench",
               "GIT_COMMITTER_EMAIL": "bench@localhost",
               "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
        start = time.time()
        for cmd in (["git", "init", "-q"], [sys.executable, "-m", "dvc", "init", "-q"], ["git", "add", "-A"],
                    ["git", "commit", "-qm", "real model"], [sys.executable, "-m", "dvc", "repro"]):
            proc = subprocess.run(cmd, cwd=repo, env=env, stdout=subprocess.PIPE, stderr=sys.stderr, text=True)
            if proc.returncode:
                sys.exit(f"{' '.join(cmd)} failed:\n{proc.stdout[-3000:]}")
        wall = time.time() - start
        if args.keep:
            shutil.copytree(repo, args.keep, symlinks=True)
        summary = json.loads((repo / "metrics/compare/ppo.json").read_text())
        bon = json.loads((repo / "metrics/compare/best_of_n.json").read_text())
        bon_name = f"best-of-{bon['n']}" if bon["enabled"] else None
        print(f"\n{args.model.name} on {summary['num_prompts']} test prompts x {summary['samples_per_prompt']} "
              f"samples; {summary['detox']['steps_done']} PPO steps; dvc repro took {wall / 60:.1f} min")
        for key in ("toxicity", "expected_max_toxicity", "toxicity_probability", "perplexity", "length"):
            print(f"{key}: PPO {interval(summary[key])}")
            if bon_name:
                print(f"{' ' * len(key)}  {bon_name} {interval(bon[key])}")
        for name, judge in summary["judges"].items():
            print(f"judge {name} toxicity: PPO {interval(judge['toxicity'])}" +
                  (f"; {bon_name} {interval(bon['judges'][name]['toxicity'])}" if bon_name else ""))
        print(f"distinct-2: {summary['before']['distinct_2']:.3f} -> {summary['after']['distinct_2']:.3f}; "
              f"per-token KL {summary['kl_mean']:.4f}")
        print(f"guards crossed: {[k for k, v in summary['guards'].items() if v is True] or 'none'}")
        before, after = read_rows(repo / "data/samples/baseline.csv"), read_rows(repo / "data/samples/ppo.csv")
        print(f"\nsample 0 of the first {SHOWN} test prompts, before | after:")
        for b, a in [(b, a) for b, a in zip(before, after) if b["sample"] == "0"][:SHOWN]:
            print(f"- {b['prompt']!r}\n    before ({float(b['toxicity']):.2f}): {b['response']!r}\n"
                  f"    after  ({float(a['toxicity']):.2f}): {a['response']!r}")


if __name__ == "__main__":
    main()
