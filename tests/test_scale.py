"""Scale-out on CPU processes: the detox stage under `accelerate launch` (one process) and torchrun (two), in bf16;
every sampling stage byte-identical on one and two processes; DPO and GRPO training data-parallel."""
import json
import math
import shutil
import sys
from pathlib import Path

import pytest
from conftest import run_script, set_params

BIN = Path(sys.executable).parent
ARGS = ["--method", "ppo", "--reference", "data/reference", "--data", "data/prepared", "--sft", "models/sft", "--out",
        "models/detoxified", "--live", "metrics/train/ppo", "--checkpoints", "checkpoints/ppo"]


def test_detox_runs_under_accelerate_launch(workdir, tmp_path):
    d = shutil.copytree(workdir, tmp_path / "w")
    launcher = [str(BIN / "accelerate"), "launch", "--cpu", "--num_processes", "1", "--num_machines", "1",
                "--mixed_precision", "no", "--dynamo_backend", "no"]
    run_script(d, "ppo.py", *ARGS, launcher=launcher)
    assert json.loads((d / "metrics/train/ppo/train.json").read_text())["steps_done"] == 4
    assert (d / "models/detoxified/adapter_model.safetensors").exists()


@pytest.mark.parametrize("kind", ["seq2seq", "causal"])
def test_detox_runs_data_parallel_on_two_cpu_processes(kind, workdir, causal_workdir, tmp_path):
    d = shutil.copytree(workdir if kind == "seq2seq" else causal_workdir, tmp_path / "w")
    if kind == "seq2seq":  # torchrun by hand
        proc = run_script(d, "ppo.py", *ARGS, launcher=[str(BIN / "torchrun"), "--nproc_per_node", "2"])
    else:  # the one setting: the stage starts itself under torchrun
        set_params(d, {"compute.processes": 2})
        proc = run_script(d, "ppo.py", *ARGS)
        assert "compute.processes 2: starting" in proc.stderr
    log = proc.stdout + proc.stderr
    assert "process 0 of 2" in log and "process 1 of 2" in log and "16 in all" in log
    assert log.count("saved the PPO adapter") == 1  # only the main process writes outputs
    assert json.loads((d / "metrics/train/ppo/train.json").read_text())["steps_done"] == 4


@pytest.mark.parametrize("kind", ["seq2seq", "causal"])
def test_detox_trains_in_bfloat16(kind, workdir, causal_workdir, tmp_path):
    """The dtype GPUs get from compute.dtype auto, exercised on CPU: value head, scoring and saving must cope."""
    from safetensors.torch import load_file

    d = shutil.copytree(workdir if kind == "seq2seq" else causal_workdir, tmp_path / "w")
    set_params(d, {"compute.dtype": "bfloat16"})
    proc = run_script(d, "ppo.py", *ARGS)
    assert "on cpu in bfloat16" in proc.stderr
    train = json.loads((d / "metrics/train/ppo/train.json").read_text())
    assert train["steps_done"] == 4 and all(math.isfinite(train[k]) for k in ("last_reward_mean", "last_kl"))
    weights = load_file(d / "models/detoxified/adapter_model.safetensors")
    assert weights and all(w.isfinite().all() for w in weights.values())


def _files(folder: Path) -> dict:
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("kind", ["seq2seq", "causal"])
def test_every_sampling_stage_gives_the_same_bytes_on_one_and_on_two_processes(kind, workdir, causal_workdir,
                                                                               tmp_path):
    """compute.processes: 2 starts each stage under torchrun (two CPU processes, gloo); each process takes whole
    batches of the prompts, seeded from (seed, the batch's first sample): the samples CSVs and metrics of baseline,
    an evaluation of a trained adapter (PPO's; DPO's and GRPO's take the same code path) and best_of_n, and the
    reference samples, equal one process's byte for byte (a causal policy: the baseline and the reference samples,
    its own generation path; the other stages share the seq2seq run's code)."""
    d = shutil.copytree(workdir if kind == "seq2seq" else causal_workdir, tmp_path / "w")
    set_params(d, {"compute.threads": 1, "methods.ppo.max_steps": 1, "reference.n": 2, "reference.num_prompts": 16,
                   "best_of_n.n": 2, "evaluation.num_samples": 6})  # 6 x 2 samples: 2 batches of 8, the last short
    evaluations = [("baseline", "start")]  # causal: the sampling code path of a causal policy, once (issue 38)
    if kind == "seq2seq":  # every kind of sampling stage
        run_script(d, "ppo.py", "--method", "ppo", "--reference", "data/reference", "--data", "data/prepared",
                   "--sft", "models/sft", "--out", "models/trained/ppo", "--live", "live", "--checkpoints", "ckpt")
        evaluations += [("evaluate@ppo", "models/trained/ppo"), ("best_of_n", "best-of-n")]
    common = ["--sft", "models/sft", "--data", "data/prepared"]
    out = {}
    for procs in (1, 2):
        set_params(d, {"compute.processes": procs})
        logs = ""
        for name, policy in evaluations:
            proc = run_script(d, "evaluate.py", "--policy", policy, *common, "--metrics", f"{procs}/{name}.json",
                              "--samples", f"{procs}/{name}.csv")
            logs += proc.stderr
        proc = run_script(d, "reference.py", "--data", "data/prepared", "--sft", "models/sft", "--out",
                          f"{procs}/reference")
        logs += proc.stderr
        out[procs] = _files(d / str(procs))
        summary = json.loads(out[procs].pop(Path("reference/summary.json")))
        out[procs]["summary"] = {k: v for k, v in summary.items() if k != "wall_s"}  # wall time aside
        if procs == 2:
            assert "process 0 of 2: prompts 0-3 (evaluat" in logs and "process 1 of 2: prompts 4-5 (evaluat" in logs
            assert "process 1 of 2: prompts 8-15 (reference samples" in logs
    assert len(out[1]) == 2 * len(evaluations) + 2 and out[1].keys() == out[2].keys()
    assert [name for name in out[1] if out[1][name] != out[2][name]] == []


@pytest.mark.parametrize("kind", ["seq2seq", "causal"])
def test_dpo_trains_data_parallel_on_two_cpu_processes_and_writes_once(kind, workdir, causal_workdir, tmp_path):
    """TRL's DPOTrainer under torchrun (compute.processes: 2): each process takes its share of the pairs (half the
    steps of one process for the same epoch), only the main process writes the adapter and the curves."""
    d = shutil.copytree(workdir if kind == "seq2seq" else causal_workdir, tmp_path / "w")
    from detoxkit.preferences import make_pairs, read_reference

    set_params(d, {"reference.n": 2, "reference.num_prompts": 32, "methods.dpo.min_pairs": 8, "methods.dpo.max_steps": -1,
                   "methods.dpo.epochs": 1, "methods.dpo.batch_size": 2})
    run_script(d, "reference.py", "--data", "data/prepared", "--sft", "models/sft", "--out", "data/reference")
    pairs = len(make_pairs(read_reference(d / "data/reference")[0], 0.0)[0])  # the tiny params' min_margin
    steps = {}
    for procs in (1, 2):
        set_params(d, {"compute.processes": procs})
        proc = run_script(d, "dpo.py", "--method", "dpo", "--reference", "data/reference", "--data", "data/prepared",
                          "--sft", "models/sft", "--out", f"dpo{procs}", "--live", f"live{procs}", "--checkpoints", "c")
        train = json.loads((d / f"live{procs}/train.json").read_text())
        steps[procs] = train["steps_done"]
        assert train["processes"] == procs and (d / f"dpo{procs}/adapter_model.safetensors").is_file()
        assert proc.stderr.count("saved the DPO adapter") == 1  # one writer
        loss = (d / f"live{procs}/plots/metrics/dpo/loss.tsv").read_text().splitlines()
        assert len(loss) == 1 + steps[procs]  # one curve, a row per step, written once
    assert steps[1] == math.ceil(pairs / 2) and steps[2] == math.ceil(pairs / 4)  # each process: half the pairs


@pytest.mark.parametrize("kind", ["seq2seq", "causal"])
def test_grpo_trains_data_parallel_on_two_cpu_processes_and_writes_once(kind, workdir, causal_workdir, tmp_path):
    """Our GRPO engine under torchrun (compute.processes: 2): each process samples groups for its own prompts, the
    gradients are averaged (all-reduce) before every optimizer step, so both processes end with the same adapter;
    only the main process writes the adapter and the curves."""
    from safetensors.torch import load_file

    d = shutil.copytree(workdir if kind == "seq2seq" else causal_workdir, tmp_path / "w")
    set_params(d, {"compute.processes": 2, "methods.grpo.max_steps": 2, "methods.grpo.checkpoint_every": 0})
    args = ["--method", "grpo", "--reference", "data/reference", "--data", "data/prepared", "--sft", "models/sft",
            "--out", "grpo", "--live", "live", "--checkpoints", "c"]
    proc = run_script(d, "grpo.py", *args)
    log = proc.stdout + proc.stderr
    assert "compute.processes 2: starting" in log and "process 1 of 2: 4 prompts x 2 responses per step" in log
    assert log.count("saved the GRPO adapter") == 1  # one writer
    train = json.loads((d / "live/train.json").read_text())
    assert train["processes"] == 2 and train["rollouts"] == 2 * 4 * 2 * 2  # steps x prompts x group x processes
    kl = (d / "live/plots/metrics/grpo/kl.tsv").read_text().splitlines()
    assert kl[0] == "step\tkl" and len(kl) == 1 + 2  # written once
    # the processes stepped in lockstep: each holds the same adapter at the end (checked bit for bit by the engine)
    assert "the 2 processes hold the same adapter" in log
    weights = load_file(d / "grpo/adapter_model.safetensors")
    assert weights and any(w.abs().sum() > 0 for k, w in weights.items() if "lora_B" in k)  # it trained
