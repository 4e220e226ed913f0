"""Shared fixtures: tiny offline models built once, and throw-away git + DVC copies of the project."""
import math
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

# Any accidental download must fail loudly, and nothing may phone home.
os.environ.update({"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
                   "DVC_NO_ANALYTICS": "1", "TOKENIZERS_PARALLELISM": "false"})

from detoxkit.io import load_script  # noqa: E402 (after the offline switches)  the package is installed (pip install -e .): no path edits
from detoxkit.config import load_params  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def stage(name: str):
    """The stage script stages/<name>.py as a module (its helpers and main()), imported on first use."""
    return load_script(ROOT / "stages" / f"{name}.py")


# The tools the tests use, importable by name from here on (`from make_tiny import tiny_params`).
make_tiny = load_script(ROOT / "tools" / "make_tiny.py")
real_models = load_script(ROOT / "tools" / "real_models.py")

os.environ.pop("PYTHONDONTWRITEBYTECODE", None)  # users' machines write __pycache__ into stage code
if os.environ.get("PYTEST_XDIST_WORKER_COUNT"):  # pytest-xdist: share the cores between the workers
    workers = int(os.environ["PYTEST_XDIST_WORKER_COUNT"])
    os.environ["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // workers))
ENV = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
       "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}
PROJECT_FILES = ["stages", "tools", "dvc.yaml", "plots", "params.yaml", ".gitignore", ".dvcignore", "requirements.txt"]


# The order pytest-xdist hands files to workers (--dist loadfile --no-loadscope-reorder): the four longest
# start at once, one a worker; each worker whose first file is a single long test is then given a second
# file at once, so those are short ones (they wait behind it); the rest go to whichever worker frees first.
# Without this the longest file could start last and run alone on one core at the end.
LONGEST_FIRST = ["test_pipeline.py", "test_causal_pipeline.py", "test_chat_pipeline.py", "test_resume.py",
                 "test_probe_inputs.py", "test_units.py", "test_causal.py", "test_judges.py", "test_scorers.py",
                 "test_scale.py", "test_stage_errors.py", "test_threads.py", "test_sft.py", "test_models.py",
                 "test_probe_params.py", "test_code_deps.py"]


def pytest_collection_modifyitems(items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: each file keeps its own order


def finite(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


def sh(*cmd, cwd, check=True, timeout=600):
    """Run a command with the test venv first on PATH; on failure show its output."""
    proc = subprocess.run([str(c) for c in cmd], cwd=cwd, env=ENV, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(map(str, cmd))} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return proc


def dvc(*args, cwd, **kw):
    return sh(sys.executable, "-m", "dvc", *args, cwd=cwd, **kw)


def set_params(repo: Path, overrides: dict):
    """Set dotted keys in repo/params.yaml (what `dvc exp run -S key=value` does)."""
    from make_tiny import override_params

    override_params(repo / "params.yaml", overrides)


@pytest.fixture(scope="session")
def tiny(tmp_path_factory):
    """Tiny T5 policy + RoBERTa classifier + dialogue file, built from configs with local tokenizers."""
    from make_tiny import build_all

    out = tmp_path_factory.mktemp("tiny")
    return {"dir": out, "params": build_all(out)}


def run_main(monkeypatch, cwd, module, *args):
    """Call a stage's main() in this process (fast), as `python stages/<module>.py args` would."""
    monkeypatch.chdir(cwd)
    monkeypatch.setattr(sys, "argv", [module, *args])
    return stage(module).main()


def run_script(cwd, script, *args, check=True, launcher=None):
    """Run stages/<script> directly (optionally under a launcher such as accelerate or torchrun)."""
    cmd = [*(launcher or [sys.executable]), str(ROOT / "stages" / script), *args]
    proc = subprocess.run(cmd, cwd=cwd, env=ENV, capture_output=True, text=True, timeout=300)
    if check:
        assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


def _workdir(params: dict, tmp_path_factory):
    d = tmp_path_factory.mktemp("stages")
    shutil.copy(ROOT / "params.yaml", d / "params.yaml")
    set_params(d, {**params, "policy.adapter": None})
    run_script(d, "prepare.py", "--out", "data/prepared")
    return d


@pytest.fixture(scope="session")
def workdir(tiny, tmp_path_factory):
    """A folder with the tiny (T5) params and a prepared dataset: stage scripts can run from here."""
    return _workdir(tiny["params"], tmp_path_factory)


@pytest.fixture(scope="session")
def causal_workdir(tiny, tmp_path_factory):
    """As workdir, for the tiny GPT-2 policy."""
    from make_tiny import tiny_params

    return _workdir(tiny_params(str(tiny["dir"]), "gpt2"), tmp_path_factory)


def make_repo(dest: Path, tiny_params: dict, overrides: dict | None = None, remote: Path | None = None) -> Path:
    """A fresh git + DVC repository holding the project, pointed at the tiny models."""
    dest.mkdir(parents=True)
    for name in PROJECT_FILES:
        src = ROOT / name
        (shutil.copytree if src.is_dir() else shutil.copy)(src, dest / name)
    for cache in dest.rglob("__pycache__"):
        shutil.rmtree(cache)
    sh("git", "init", "-q", "-b", "main", cwd=dest)
    dvc("init", "-q", cwd=dest)
    dvc("config", "core.analytics", "false", cwd=dest)
    shutil.copytree(ROOT / ".dvc/plots", dest / ".dvc/plots")  # the offline plots page (docs/dvc.md)
    dvc("config", "plots.html_template", "plots/index.html", cwd=dest)
    dvc("remote", "add", "-d", "local", str(remote or dest.parent / "storage"), cwd=dest)
    set_params(dest, {**tiny_params, **(overrides or {})})
    sh("git", "add", "-A", cwd=dest)
    sh("git", "commit", "-qm", "project", cwd=dest)
    return dest


def copy_repo(src: Path, dest: Path) -> Path:
    """A copy of a repository after a run: git history, DVC cache and outputs included."""
    shutil.copytree(src, dest, symlinks=True)
    return dest


CARD_CHECK = """
import torch
from detoxkit.settings import ComputeSettings
from detoxkit.models import load_detoxified

ref, _, _ = load_detoxified(folder, ComputeSettings(device="cpu", dtype="float32", compile_generation=False))
again = ref.generate(input_ids=ids["input_ids"], attention_mask=ids["attention_mask"], max_new_tokens=40)
assert torch.equal(out, again), (out, again)  # the same text
with torch.no_grad():
    feed = ({"input_ids": ids["input_ids"], "attention_mask": ids["attention_mask"], "decoder_input_ids": out}
            if model.config.is_encoder_decoder else {"input_ids": out})
    mine, theirs = model(**feed).logits, ref(**feed).logits
assert mine.shape == theirs.shape and torch.allclose(mine, theirs, atol=1e-5), (mine - theirs).abs().max()
print("SAME", (mine - theirs).abs().max().item())
"""


def check_modes(repo: Path, mask: int):
    """Every output of a run has the mode a plain open()/mkdir gives under `mask` (none private to its owner)."""
    outputs = [p for top in ("data", "models", "metrics", "reports") for p in [repo / top, *(repo / top).rglob("*")]]
    wrong = {}
    for p in outputs:
        if p.is_symlink():
            continue
        mode = p.stat().st_mode & 0o777
        want = (0o777 if p.is_dir() or mode & 0o100 else 0o666) & ~mask
        if mode != want:
            wrong[str(p.relative_to(repo))] = oct(mode)
    assert len(outputs) > 50 and not wrong, wrong


def check_model_card_snippet(repo: Path, folder: Path | None = None):
    """The model card's 'How to use' code (transformers and PEFT only), run as written in a process of its own,
    loads the published folder (models/detoxified, or `folder`) and gives the same text and logits as
    load_detoxified."""
    card = ((folder or repo / "models/detoxified") / "README.md").read_text()
    code = card.split("## How to use", 1)[1].split("```python\n", 1)[1].split("```", 1)[0]
    if folder is not None:  # published elsewhere, then moved: the snippet's one line that names the folder
        code = re.sub(r"^folder = .*$", f"folder = {str(folder)!r}", code, count=1, flags=re.M)
    assert "detoxkit" not in code and "sys.path" not in code
    proc = subprocess.run([sys.executable, "-c", code + CARD_CHECK], cwd=repo, env=ENV, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0 and "SAME" in proc.stdout, proc.stdout + proc.stderr
    return code


ENTRIES = list(load_params(ROOT / "params.yaml").methods)  # params.yaml's methods entries: ppo, dpo, grpo
STAGES = ["prepare", "check", "sft", "baseline", "best_of_n", "reference", *(f"train@{m}" for m in ENTRIES),
          *(f"evaluate@{m}" for m in ENTRIES), *(f"bon@{m}" for m in ENTRIES), "report",
          "publish"]  # lineage runs on every repro


def ran_stages(output: str):
    """Stages `dvc repro` reports it ran (or, with --dry, would run), less lineage, which always runs."""
    return sorted(s for s in STAGES if f"Running stage '{s}'" in output)


def changed_stages(repo):
    """Stages `dvc status` reports as changed themselves, less lineage (always changed by design)."""
    import json

    out = json.loads(dvc("status", "--json", cwd=repo).stdout or "{}")
    assert out.get("lineage", ["always changed"]) == ["always changed"], out
    return sorted(name.split(":")[-1] for name in out if name.split(":")[-1] != "lineage")


@pytest.fixture(scope="session")
def ran(tiny, tmp_path_factory):
    """One full tiny run with the sft stage on; tests copy it before changing anything."""
    repo = make_repo(tmp_path_factory.mktemp("e2e") / "repo", tiny["params"],
                     {"policy.adapter": "sft", "best_of_n.enabled": True, "publish.method": "ppo"})
    mask = os.umask(0o022)  # the usual umask: every output must be readable by others (test_pipeline.py)
    try:
        out = dvc("repro", cwd=repo)
    finally:
        os.umask(mask)
    assert ran_stages(out.stdout) == sorted(STAGES)
    assert "estimated time left if every stage after this runs" in out.stdout + out.stderr  # baseline's (eta.py)
    sh("git", "add", "-A", cwd=repo)
    sh("git", "commit", "-qm", "run", cwd=repo)
    return repo
