"""What "nothing stale" costs: the no-op `dvc repro` time before and after, and the content hash of inputs.

    python bench/bench_noop_repro.py --setup tiny --before 2fec512           # about 4 minutes on 2 CPU cores
    python bench/bench_noop_repro.py --setup real --before 2fec512           # needs real/smollm2-135m-instruct
    python bench/bench_noop_repro.py --hash ../shared/data/rtp real/smollm2-135m-instruct

For each version (--before: a git revision of this repository; after: the working tree) the project is copied
into a temporary git + DVC repository, `dvc repro` runs the whole DAG once (untimed), then the no-op
`dvc repro` is timed --repeats times, the two versions interleaved, and each run is checked to have run no
stage but lineage. A version's stage scripts import the detoxkit beside them (a script's folder comes first on
the import path), so the old version runs its own library. --hash times the content hash of each path with an
empty cache (every byte read) and then with the cache (size and mtime only). Run it alone on the machine.
"""
import argparse
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from detoxkit.io import load_script, write_json

ROOT = Path(__file__).resolve().parents[1]
PROJECT = ["stages", "tools", "dvc.yaml", "plots", "params.yaml", ".gitignore", ".dvcignore", "requirements.txt"]


ENV = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",  # stages' `python`
       "DVC_NO_ANALYTICS": "1"}


def sh(*cmd, cwd):
    proc = subprocess.run([str(c) for c in cmd], cwd=cwd, capture_output=True, text=True, env=ENV)
    if proc.returncode:
        raise SystemExit(f"{' '.join(map(str, cmd))} failed:\n{proc.stdout}\n{proc.stderr}")
    return proc


def project_copy(rev, dest: Path) -> Path:
    dest.mkdir(parents=True)
    if rev is None:
        for name in PROJECT:
            (shutil.copytree if (ROOT / name).is_dir() else shutil.copy)(ROOT / name, dest / name)
    else:
        archive = subprocess.run(["git", "archive", "--format=tar", rev, *PROJECT], cwd=ROOT, capture_output=True,
                                 check=True).stdout
        subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
    return dest


def setup_repo(rev, dest: Path, overrides: dict) -> Path:
    make_tiny = load_script(ROOT / "tools" / "make_tiny.py")
    repo = project_copy(rev, dest)
    for cache in repo.rglob("__pycache__"):
        shutil.rmtree(cache)
    sh("git", "init", "-q", "-b", "main", cwd=repo)
    sh(sys.executable, "-m", "dvc", "init", "-q", cwd=repo)
    make_tiny.override_params(repo / "params.yaml", overrides)
    sh("git", "add", "-A", cwd=repo)
    sh("git", "-c", "user.name=b", "-c", "user.email=b@b", "commit", "-qm", "project", cwd=repo)
    start = time.perf_counter()
    sh(sys.executable, "-m", "dvc", "repro", cwd=repo)
    print(f"{dest.name}: full run {time.perf_counter() - start:.0f} s", file=sys.stderr)
    return repo


def noop(repo: Path) -> float:
    start = time.perf_counter()
    out = sh(sys.executable, "-m", "dvc", "repro", cwd=repo).stdout
    wall = time.perf_counter() - start
    ran = [line for line in out.splitlines() if line.startswith("Running stage") and "'lineage'" not in line]
    assert not ran, ran  # a no-op: nothing but lineage ran
    return wall


def overrides_for(setup: str, work: Path) -> dict:
    if setup == "tiny":
        make_tiny = load_script(ROOT / "tools" / "make_tiny.py")
        return {**make_tiny.build_all(work / "tiny"), "policy.adapter": "sft"}
    load_script(ROOT / "tests" / "conftest.py")  # the real-model test's settings (offline switches included)
    real = load_script(ROOT / "tests" / "test_real_model.py")
    model = ROOT / "real" / "smollm2-135m-instruct"
    if not model.is_dir():
        raise SystemExit(f"{model} is missing: python tools/real_models.py --out {model.relative_to(ROOT)}")
    data = work / "prompts.jsonl"
    real.write_prompts(data)
    return real.settings(model, data)


def bench_hash(paths: list[str]) -> list[dict]:
    from detoxkit.manifest import content_hash

    rows = []
    for ref in paths:
        path = Path(ref)
        cache = {}
        start = time.perf_counter()
        digest, files, size = content_hash(path, cache)
        cold = time.perf_counter() - start
        warm = []
        for _ in range(5):
            start = time.perf_counter()
            assert content_hash(path, cache)[0] == digest
            warm.append(time.perf_counter() - start)
        rows.append({"path": ref, "files": files, "bytes": size, "cold_s": cold, "cached_s": statistics.median(warm)})
        print(f"{ref}: {files} files, {size / 1e6:.1f} MB: {cold:.3f} s uncached, {statistics.median(warm) * 1e3:.2f} "
              f"ms cached (median of 5)")
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--setup", choices=["tiny", "real"])
    parser.add_argument("--before", help="git revision to compare with the working tree")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--hash", nargs="*", default=[], help="paths whose content hash to time")
    parser.add_argument("--json", help="write the figures here")
    args = parser.parse_args()

    result = {"machine": f"{platform.machine()}, {platform.processor() or 'cpu'}, "
                         f"{os.cpu_count()} cores", "python": platform.python_version()}
    if args.hash:
        result["hash"] = bench_hash(args.hash)
    if args.setup:
        with tempfile.TemporaryDirectory() as tmp:
            work = Path(tmp)
            overrides = overrides_for(args.setup, work)
            repos = {"before": setup_repo(args.before, work / "before", overrides),
                     "after": setup_repo(None, work / "after", overrides)}
            times = {name: [] for name in repos}
            for _ in range(args.repeats):  # interleaved: a slow moment of the machine hits both
                for name, repo in repos.items():
                    times[name].append(noop(repo))
            result["noop_repro"] = {"setup": args.setup, "before_rev": args.before, **{
                name: {"median_s": statistics.median(t), "runs_s": t} for name, t in times.items()}}
            print(f"no-op dvc repro ({args.setup}): before {statistics.median(times['before']):.2f} s, "
                  f"after {statistics.median(times['after']):.2f} s (medians of {args.repeats})")
    if args.json:
        write_json(args.json, result)


if __name__ == "__main__":
    main()
