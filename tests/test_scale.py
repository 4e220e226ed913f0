"""The detox stage under `accelerate launch` (one CPU process), data-parallel under torchrun (two), and in bf16."""
import json
import math
import shutil
import sys
from pathlib import Path

import pytest
from conftest import run_script, set_params

BIN = Path(sys.executable).parent
ARGS = ["--data", "data/prepared", "--sft", "models/sft", "--out", "models/detoxified", "--live", "metrics/detox",
        "--checkpoints", "checkpoints/detox"]


def test_detox_runs_under_accelerate_launch(workdir, tmp_path):
    d = shutil.copytree(workdir, tmp_path / "w")
    launcher = [str(BIN / "accelerate"), "launch", "--cpu", "--num_processes", "1", "--num_machines", "1",
                "--mixed_precision", "no", "--dynamo_backend", "no"]
    run_script(d, "detox.py", *ARGS, launcher=launcher)
    assert json.loads((d / "metrics/detox/train.json").read_text())["steps_done"] == 4
    assert (d / "models/detoxified/adapter_model.safetensors").exists()


@pytest.mark.parametrize("kind", ["seq2seq", "causal"])
def test_detox_runs_data_parallel_on_two_cpu_processes(kind, workdir, causal_workdir, tmp_path):
    d = shutil.copytree(workdir if kind == "seq2seq" else causal_workdir, tmp_path / "w")
    proc = run_script(d, "detox.py", *ARGS, launcher=[str(BIN / "torchrun"), "--nproc_per_node", "2"])
    log = proc.stdout + proc.stderr
    assert "process 0 of 2" in log and "process 1 of 2" in log and "16 in all" in log
    assert log.count("saved the detoxified adapter") == 1  # only the main process writes outputs
    assert json.loads((d / "metrics/detox/train.json").read_text())["steps_done"] == 4


@pytest.mark.parametrize("kind", ["seq2seq", "causal"])
def test_detox_trains_in_bfloat16(kind, workdir, causal_workdir, tmp_path):
    """The dtype GPUs get from compute.dtype auto, exercised on CPU: value head, scoring and saving must cope."""
    from safetensors.torch import load_file

    d = shutil.copytree(workdir if kind == "seq2seq" else causal_workdir, tmp_path / "w")
    set_params(d, {"compute.dtype": "bfloat16"})
    proc = run_script(d, "detox.py", *ARGS)
    assert "on cpu in bfloat16" in proc.stderr
    train = json.loads((d / "metrics/detox/train.json").read_text())
    assert train["steps_done"] == 4 and all(math.isfinite(train[k]) for k in ("env/reward_mean", "objective/kl"))
    weights = load_file(d / "models/detoxified/adapter_model.safetensors")
    assert weights and all(w.isfinite().all() for w in weights.values())
