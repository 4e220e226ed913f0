"""A new user's probe, part 2: every input file missing, empty, truncated and damaged: the data file, the policy's
model folder, a starting adapter folder and a Python scorer's module.

Each case runs the stages in `dvc repro` order (lineage, prepare, check, baseline) as processes, after one good run
of all four, until one fails, and asserts three things: the error's first line names the setting or the file, the
exit status is 2, and the failing stage's outputs from the good run are intact, byte for byte. (kill -9 in each
training stage: tests/test_resume.py for detox, tests/test_stage_errors.py for dpo.)
"""
import shutil
from pathlib import Path

import pytest
from conftest import run_script, set_params

STAGES = [  # (script, arguments, outputs), in dvc.yaml's order
    ("lineage.py", ["--out", "metrics/models"], ["metrics/models"]),
    ("prepare.py", ["--out", "data/prepared"], ["data/prepared"]),
    ("check.py", ["--data", "data/prepared", "--models", "metrics/models", "--out", "metrics/checks.json"],
     ["metrics/checks.json"]),
    ("evaluate.py", ["--policy", "start", "--sft", "models/sft", "--data", "data/prepared", "--metrics",
                     "metrics/baseline.json", "--samples", "data/samples/baseline.csv", "--models", "metrics/models"],
     ["metrics/baseline.json", "data/samples/baseline.csv"]),
]
SCORER = "def score(texts):\n    return [0.9 if 'hate' in t else 0.1 for t in texts]\n"


def _missing(path: Path):
    shutil.rmtree(path) if path.is_dir() else path.unlink()


def _empty(path: Path):
    if path.is_dir():
        shutil.rmtree(path)
        path.mkdir()
    else:
        path.write_bytes(b"")


def _truncate(file: Path):
    data = file.read_bytes()
    file.write_bytes(data[: len(data) // 2])


def _damage(file: Path):
    file.write_bytes(b"\x00\xff\xfe garbage \x80" * 64)


# setting -> (what the setting points at, the file inside a folder that is truncated or damaged)
INPUTS = {"data.source": ("dialogues.jsonl", None), "policy.model": ("t5", "model.safetensors"),
          "policy.adapter": ("adapter", "adapter_model.safetensors"), "reward.model": ("scorer.py", None)}
DAMAGED = {"policy.model": "config.json", "policy.adapter": "adapter_config.json"}  # what a damaged folder has
CASES = [(key, how) for key in INPUTS for how in ("missing", "empty", "truncated", "damaged")]


@pytest.fixture(scope="module")
def good_run(workdir, tiny, tmp_path_factory):
    """One good run of the four stages with every input a private copy (a LoRA adapter made here)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForSeq2SeqLM

    d = tmp_path_factory.mktemp("probe") / "w"
    shutil.copytree(workdir, d)
    inputs = d.parent / "inputs"
    inputs.mkdir()
    shutil.copy(tiny["dir"] / "dialogues.jsonl", inputs / "dialogues.jsonl")
    shutil.copytree(tiny["dir"] / "policy", inputs / "t5")
    torch.manual_seed(0)
    model = get_peft_model(AutoModelForSeq2SeqLM.from_pretrained(inputs / "t5"), LoraConfig(r=2, target_modules=["q"]))
    model.save_pretrained(inputs / "adapter")
    (inputs / "scorer.py").write_text(SCORER)
    set_params(d, {"data.source": str(inputs / "dialogues.jsonl"), "policy.model": str(inputs / "t5"),
                   "policy.adapter": str(inputs / "adapter"), "reward.model": f"python:{inputs / 'scorer.py'}:score"})
    for script, args, _ in STAGES:
        run_script(d, script, *args)
    return d


def snapshot(root: Path, outputs: list[str]) -> dict:
    files = {}
    for out in outputs:
        path = root / out
        for p in ([path] if path.is_file() else sorted(path.rglob("*"))):
            if p.is_file():
                files[str(p.relative_to(root))] = p.read_bytes()
    return files


@pytest.mark.parametrize("key, how", CASES, ids=[f"{k}-{h}" for k, h in CASES])
def test_a_bad_input_file_stops_a_stage_naming_it_with_exit_2_and_outputs_intact(good_run, tmp_path, key, how):
    d = shutil.copytree(good_run, tmp_path / "w")
    inputs = shutil.copytree(good_run.parent / "inputs", tmp_path / "inputs")
    target, inner = INPUTS[key]
    path = inputs / target
    set_params(d, {key: f"python:{path}:score" if key == "reward.model" else str(path)})
    if how == "missing":
        _missing(path)
    elif how == "empty":
        _empty(path)
    elif how == "truncated":
        _truncate(path / inner if inner else path)
    else:
        _damage(path / DAMAGED[key] if key in DAMAGED else path)
    befores = {script: snapshot(d, outs) for script, _, outs in STAGES}
    for script, args, outs in STAGES:
        proc = run_script(d, script, *args, check=False)
        if proc.returncode != 0:
            break
    else:
        pytest.fail(f"{key} {how}: every stage ran")
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, f"{script}: {proc.stderr[-3000:]}"
    assert len(errors) == 1, proc.stderr[-3000:]
    named = [key, str(path)] + ([str(path / inner)] if inner else [])
    assert any(n in errors[0] for n in named), (script, errors[0])
    assert snapshot(d, outs) == befores[script], script
