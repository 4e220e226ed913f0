"""The detox stage under `accelerate launch` (one CPU process) and data-parallel under torchrun (two)."""
import json
import shutil
import sys
from pathlib import Path

from conftest import run_script

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


def test_detox_runs_data_parallel_on_two_cpu_processes(workdir, tmp_path):
    d = shutil.copytree(workdir, tmp_path / "w")
    proc = run_script(d, "detox.py", *ARGS, launcher=[str(BIN / "torchrun"), "--nproc_per_node", "2"])
    log = proc.stdout + proc.stderr
    assert "process 0 of 2" in log and "process 1 of 2" in log and "16 in all" in log
    assert log.count("saved the detoxified adapter") == 1  # only the main process writes outputs
    assert json.loads((d / "metrics/detox/train.json").read_text())["steps_done"] == 4
