"""The evaluation stage on 1 process against 2 (compute.processes), on the same cores: the cost of sharding and
gathering. Two cores are no speed-up target: the figure says what the split and the gather cost.

    python bench/bench_processes.py --setup tiny --rounds 3
    python bench/bench_processes.py --setup real --rounds 3     # needs real/smollm2-135m-instruct

A temporary folder gets the setup's params and a prepared dataset; then `stages/evaluate.py --policy start`
(the baseline stage) runs with 1 process of 2 threads and with 2 processes of 1 thread each (every core busy
in both), interleaved over --rounds. Each run's samples are checked to be the same texts. Run it alone.
"""
import argparse
import csv
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from detoxkit.io import load_script, write_json

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}


def run(work: Path, *args):
    proc = subprocess.run([sys.executable, *map(str, args)], cwd=work, env=ENV, capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"{args} failed:\n{proc.stderr[-3000:]}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--setup", choices=["tiny", "real"], required=True)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", help="write the figures here")
    args = parser.parse_args()
    make_tiny = load_script(ROOT / "tools" / "make_tiny.py")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        (work / "params.yaml").write_text((ROOT / "params.yaml").read_text())
        if args.setup == "tiny":
            over = {**make_tiny.build_all(work / "tiny"), "policy.adapter": None, "evaluation.num_samples": 13,
                    "evaluation.samples_per_prompt": 4}
        else:
            load_script(ROOT / "tests" / "conftest.py")
            real = load_script(ROOT / "tests" / "test_real_model.py")
            real.write_prompts(work / "prompts.jsonl")
            over = {**real.settings(ROOT / "real" / "smollm2-135m-instruct", work / "prompts.jsonl"),
                    "evaluation.num_samples": "all", "evaluation.samples_per_prompt": 4, "evaluation.judges": []}
        make_tiny.override_params(work / "params.yaml", over)
        run(work, ROOT / "stages/prepare.py", "--out", "data/prepared")
        walls, texts = {1: [], 2: []}, {}
        for _ in range(args.rounds):
            for procs in (1, 2):
                make_tiny.override_params(work / "params.yaml", {"compute.processes": procs,
                                                                  "compute.threads": 2 // procs})
                start = time.perf_counter()
                run(work, ROOT / "stages/evaluate.py", "--policy", "start", "--sft", "models/sft", "--data",
                    "data/prepared", "--metrics", f"m{procs}.json", "--samples", f"s{procs}.csv")
                walls[procs].append(time.perf_counter() - start)
                with (work / f"s{procs}.csv").open(newline="") as fh:
                    texts[procs] = [r["response"] for r in csv.DictReader(fh)]
        assert texts[1] == texts[2], "the two runs drew different samples"
        samples = len(texts[1])
    result = {"machine": f"{platform.machine()}, {os.cpu_count()} cores", "setup": args.setup, "samples": samples,
              "one_process_two_threads_s": walls[1], "two_processes_one_thread_s": walls[2],
              "median_ratio_2_over_1": statistics.median(b / a for a, b in zip(walls[1], walls[2]))}
    print(f"{args.setup}: {samples} samples; 1 process x 2 threads {statistics.median(walls[1]):.1f} s, "
          f"2 processes x 1 thread {statistics.median(walls[2]):.1f} s (medians of {args.rounds}, whole stage "
          f"including start-up); 2/1 = {result['median_ratio_2_over_1']:.2f}")
    if args.json:
        write_json(args.json, result)


if __name__ == "__main__":
    main()
