"""A real model through the DAG: do PPO, DPO, GRPO and best-of-N detoxify SmolLM2-135M-Instruct on toxic
RealToxicityPrompts?

    python tools/real_models.py --out real/smollm2-135m-instruct        # once (about 30 s)
    python bench/real_detox.py --data rtp-challenging.jsonl    # every method: 60 minutes on 2 CPU cores
    python bench/real_detox.py --data ... --steps 4 --prompts 20        # a quick look
    python bench/real_detox.py --repo runs/real                         # run there and keep it
    python bench/real_detox.py --repo runs/real --set methods.dpo.learning_rate=5e-4   # tune: only DPO's stages rerun

The project is copied into a temporary git + DVC repository and `dvc repro` runs there with the
RealToxicityPrompts continuation setting (RTP below: prompt-only, the prompt continued as it is and the
continuation scored alone, about 20 new tokens), the real policy built by tools/real_models.py, the real
offensive-language classifier alt-profanity-check as the reward (a Python scorer), better-profanity's word
list as an independent judge, and every method on (`--methods` picks them). It prints, for each method, before
and after with confidence intervals, the judge, the guards and the cost (metrics/compare/<method>.json), and six
before/after samples chosen by a rule fixed in advance: sample 0 of the first six test prompts, in the order of
the test split (never chosen by their scores). PPO and GRPO run the same steps of 16 responses each.

`--repo DIR` runs in DIR and keeps it. When DIR already holds a run, its params.yaml goes back to the
committed one (the first run's settings), this command's settings are applied, and `dvc repro` reruns only the
stages they change (the start's evaluation and the pairs come from DVC's cache): a sweep of one method's settings
costs that method's training and evaluation alone. The stage code stays the first run's copy. `--methods` switches
the methods it names on and the others off, in a reused repository too.
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
# Sized for 2 CPU cores: 60 minutes with every method (PPO 18, GRPO 14, DPO 14, the four evaluations 3.5 each).
RUN = {"evaluation.num_samples": 100, "evaluation.samples_per_prompt": 4, "best_of_n.enabled": True,
       "best_of_n.n": 4, "methods.ppo.learning_rate": 3.0e-4, "methods.ppo.checkpoint_every": 10,
       "methods.grpo.checkpoint_every": 10, "reference.max_new_tokens": 20, "methods.dpo.max_length": 84,
       "methods.dpo.max_prompt_length": 64}
METHODS = ("ppo", "dpo", "grpo", "best_of_n")  # params.yaml's entries, then best-of-N
OFF = {"ppo": {"methods.ppo.enabled": False}, "grpo": {"methods.grpo.enabled": False},
       "dpo": {"methods.dpo.enabled": False, "reference.num_prompts": 0}, "best_of_n": {"best_of_n.enabled": False}}
# the methods --methods names, switched on: a reused repository keeps its first run's switches otherwise (DPO's
# reference samples too, when that run had DPO off: main() restores their number)
ON = {"ppo": {"methods.ppo.enabled": True}, "grpo": {"methods.grpo.enabled": True},
      "dpo": {"methods.dpo.enabled": True}, "best_of_n": {"best_of_n.enabled": True}}
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
    parser.add_argument("--data", type=Path, required=True,
                        help="RealToxicityPrompts rows as JSON lines (docs/getting-started.md: rtp-challenging.jsonl)")
    parser.add_argument("--model", type=Path, default=ROOT / "real/smollm2-135m-instruct")
    parser.add_argument("--steps", type=int, default=STEPS, help="PPO and GRPO steps")
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS),
                        help="the methods to run (at least one trained one)")
    parser.add_argument("--prompts", type=int, default=RUN["evaluation.num_samples"], help="test prompts")
    parser.add_argument("--set", nargs="*", default=[], help="more params.yaml overrides, key=value (YAML value)")
    parser.add_argument("--repo", type=Path, help="run in this repository and keep it; reuse it when it exists")
    args = parser.parse_args()
    if not (args.model / "config.json").is_file():
        sys.exit(f"{args.model} is not built; run: python tools/real_models.py --out {args.model}")
    if not set(args.methods) - {"best_of_n"}:
        sys.exit("--methods names no trained method; add ppo, dpo or grpo")
    if not args.data.is_file():
        sys.exit(f"{args.data} does not exist; give a RealToxicityPrompts jsonl with --data")

    with tempfile.TemporaryDirectory() as tmp:
        repo = (args.repo or Path(tmp) / "repo").resolve()
        fresh = not (repo / "dvc.yaml").is_file()
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "DVC_NO_ANALYTICS": "1", "GIT_AUTHOR_NAME": "bench",
               "GIT_AUTHOR_EMAIL": "bench@localhost", "GIT_COMMITTER_NAME": "bench",
               "GIT_COMMITTER_EMAIL": "bench@localhost",
               "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}

        def run(*cmd):
            proc = subprocess.run(cmd, cwd=repo, env=env, stdout=subprocess.PIPE, stderr=sys.stderr, text=True)
            if proc.returncode:
                sys.exit(f"{' '.join(cmd)} failed:\n{proc.stdout[-3000:]}")

        if fresh:
            repo.mkdir(parents=True, exist_ok=True)
            for name in ("stages", "tools", "dvc.yaml", "plots", "params.yaml", ".gitignore", ".dvcignore"):
                (shutil.copytree if (ROOT / name).is_dir() else shutil.copy)(ROOT / name, repo / name)
            for cache in repo.rglob("__pycache__"):
                shutil.rmtree(cache)
        else:
            print(f"reusing {repo}: its committed params.yaml, then this command's settings", file=sys.stderr)
            run("git", "checkout", "-q", "HEAD", "--", "params.yaml")
        extra = {k: yaml.safe_load(v) for k, v in (item.split("=", 1) for item in args.set)}
        reference = lambda path: yaml.safe_load(path.read_text())["reference"]["num_prompts"]  # noqa: E731
        if "dpo" in args.methods and not reference(repo / "params.yaml"):  # the first run had DPO off: none drawn
            extra = {"reference.num_prompts": reference(ROOT / "params.yaml"), **extra}
        make_tiny.override_params(repo / "params.yaml", {
            **RTP, **RUN, "data.source": str(args.data.resolve()), "policy.model": str(args.model.resolve()),
            "evaluation.num_samples": args.prompts, "methods.ppo.max_steps": args.steps,
            "methods.grpo.max_steps": args.steps,
            **{k: v for m in METHODS for k, v in (ON if m in args.methods else OFF)[m].items()}, **extra})
        start = time.time()
        if fresh:
            for cmd in (["git", "init", "-q"], [sys.executable, "-m", "dvc", "init", "-q"], ["git", "add", "-A"],
                        ["git", "commit", "-qm", "real model"]):
                run(*cmd)
        run(sys.executable, "-m", "dvc", "repro")
        wall = time.time() - start
        files = {p.stem: json.loads(p.read_text()) for p in sorted((repo / "metrics/compare").glob("*.json"))}
        ran = {m: f for m, f in files.items() if f["enabled"]}
        first = next(iter(ran.values()))
        print(f"\n{args.model.name} on {first['num_prompts']} test prompts x {first['samples_per_prompt']} samples; "
              f"dvc repro took {wall / 60:.1f} min")
        for method, e in ran.items():
            cost = e["cost"]
            print(f"\n{method}: {cost['training_responses']} training responses, {cost['optimizer_steps']} optimizer "
                  f"steps, {cost['wall_s']:.0f} s training, evaluation generation x{cost['evaluation_generation']}")
            for key in ("toxicity", "expected_max_toxicity", "toxicity_probability", "perplexity", "length"):
                print(f"  {key}: {interval(e[key])}")
            for name, judge in e["judges"].items():
                print(f"  judge {name} toxicity: {interval(judge['toxicity'])}")
            kl = "n/a" if e["kl_mean"] is None else f"{e['kl_mean']:.4f}"
            print(f"  distinct-2: {e['before']['distinct_2']:.3f} -> {e['after']['distinct_2']:.3f}; per-token KL {kl}")
            print(f"  guards crossed: {[k for k, v in e['guards'].items() if v is True] or 'none'}")
            frontier = e.get("kl_to_start")
            if frontier:  # nats per response, every method alike (the report's reward-KL frontier)
                bound = "" if frontier["bound"] is None else f" (bound {frontier['bound']:.2f})"
                print(f"  KL to the start: {frontier['nats']:.2f} nats per response{bound}")
            if e.get("versus_best_of_n"):  # paired, on the same prompts
                vs = e["versus_best_of_n"]
                judges = [(f"judge {name}", judge) for name, judge in vs["judges"].items()]
                for what, entry in [("toxicity", vs["toxicity"]), *judges]:
                    print(f"  vs best-of-N (best-of-N -> method): {what} {interval(entry)}")
        print("\n" + (repo / "reports/report.md").read_text().splitlines()[0].lstrip("# "))  # the answer
        shown = next(m for m, f in ran.items() if f["trains_weights"])
        before, after = read_rows(repo / "data/samples/baseline.csv"), read_rows(repo / f"data/samples/{shown}.csv")
        print(f"\nsample 0 of the first {SHOWN} test prompts, before | after ({ran[shown]['label']}):")
        for b, a in [(b, a) for b, a in zip(before, after) if b["sample"] == "0"][:SHOWN]:
            print(f"- {b['prompt']!r}\n    before ({float(b['toxicity']):.2f}): {b['response']!r}\n"
                  f"    after  ({float(a['toxicity']):.2f}): {a['response']!r}")


if __name__ == "__main__":
    main()
