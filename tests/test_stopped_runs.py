"""A stopped `dvc` stops its stage: the trainer gets SIGTERM when its parent dies, saves a checkpoint at the next step
boundary and exits writing no output, and the next `dvc repro` resumes. A second trainer on the same folders is
refused, naming the first."""
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import psutil
import torch
from conftest import ENV, ROOT, dvc, make_repo, run_script, set_params

PPO_ARGS = ["--method", "ppo", "--reference", "data/reference", "--data", "data/prepared", "--sft", "models/sft",
            "--out", "models/trained/ppo", "--live", "metrics/train/ppo", "--checkpoints", "checkpoints/ppo"]


def wait_for_checkpoint(state, proc, output):
    """Until the run's first checkpoint is saved (it is then between steps); `output()` for the failure message."""
    deadline = time.time() + 300
    while not state.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    assert state.exists(), "the run ended before its first checkpoint\n" + output()


def test_kill_term_of_dvc_alone_stops_the_trainer_at_a_checkpoint_and_repro_resumes(tiny, tmp_path):
    over = {"policy.adapter": None, "methods.ppo.max_steps": 6, "methods.ppo.checkpoint_every": 2, "methods.dpo.enabled": False,
            "reference.num_prompts": 0}
    repo = make_repo(tmp_path / "repo", tiny["params"], over)
    log = tmp_path / "first.log"
    with log.open("w") as out:
        # SHELL=/bin/sh: on Debian dash, which forks the stage command rather than exec'ing it, so the trainer's
        # parent is a shell that outlives dvc (bash execs it: the trainer's parent is dvc itself)
        proc = subprocess.Popen([sys.executable, "-m", "dvc", "repro", "train@ppo"], cwd=repo, env={**ENV, "SHELL": "/bin/sh"},
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    state = repo / "checkpoints/ppo/state.pt"
    try:
        wait_for_checkpoint(state, proc, log.read_text)
        stage = [p for p in psutil.Process(proc.pid).children(recursive=True) if "stages/ppo.py" in p.cmdline()]
        assert stage, "no trainer under dvc"
        os.kill(proc.pid, signal.SIGTERM)  # dvc alone, as `kill <pid of dvc>` does
        proc.wait(timeout=10)
        start = time.time()
        _, alive = psutil.wait_procs(stage, timeout=30)
        assert not alive, f"the trainer outlived its dvc: {[p.pid for p in alive]}"
        print(f"the trainer stopped {time.time() - start:.1f} s after its dvc")
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    text = log.read_text()
    assert state.exists(), "the trainer ran on after its dvc ended\n" + text
    step = torch.load(state, weights_only=True)["step"]
    assert 2 < step < 6, step  # saved at the step boundary after the SIGTERM, not at a checkpoint_every step
    assert f"stopped: SIGTERM (the `dvc` that started this stage ended, or a kill) after step {step} of 6: a " \
           f"checkpoint at step {step} is in checkpoints/ppo; no output written" in text, text
    assert not (repo / "models/trained/ppo").exists() and not (repo / "metrics/train/ppo").exists()  # nothing half-written
    assert not list((repo / "models").glob(".*.tmp")) and not list((repo / "metrics").glob(".*.tmp"))

    out = dvc("repro", "train@ppo", cwd=repo)
    assert f"resuming from checkpoint at step {step} of 6" in out.stdout + out.stderr
    assert json.loads((repo / "metrics/train/ppo/train.json").read_text())["steps_done"] == 6
    assert (repo / "models/trained/ppo/adapter_model.safetensors").is_file()
    assert not (repo / "checkpoints/ppo").exists()


HOLD = "import sys, time; from detoxkit.io import hold; hold(*sys.argv[1:]); print('held', flush=True); time.sleep(600)"


def test_a_second_trainer_on_the_same_folders_is_refused_naming_the_first(workdir, tmp_path):
    d = shutil.copytree(workdir, tmp_path / "w")
    stale = d / "metrics/train/.ppo.abc123.tmp"  # the live first run's temporary: the second must leave it alone
    stale.mkdir(parents=True)
    first = subprocess.Popen([sys.executable, "-c", HOLD, "checkpoints/ppo", "models/trained/ppo", "metrics/train/ppo"], cwd=d,
                             env=ENV, stdout=subprocess.PIPE, text=True)
    try:
        assert first.stdout.readline() == "held\n"
        proc = run_script(d, "ppo.py", *PPO_ARGS, check=False)
        assert proc.returncode == 2
        errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
        assert errors == [proc.stderr.strip().splitlines()[-1]]
        assert errors[0].startswith(
            f"error: checkpoints/ppo is in use by process {first.pid} ({os.path.basename(sys.executable)} -c "
            "checkpoints/ppo models/trained/ppo metrics/train/ppo), which holds checkpoints/.ppo.lock"), errors
        assert f"`kill {first.pid}`" in errors[0]
        assert stale.is_dir() and not (d / "models/trained/ppo").exists()
    finally:
        first.kill()  # SIGKILL: no cleanup runs, and the OS releases the lock
        first.wait()
    again = subprocess.run([sys.executable, "-c", HOLD.replace("time.sleep(600)", "pass"), "checkpoints/ppo"], cwd=d,
                           env=ENV, capture_output=True, text=True, timeout=60)
    assert again.returncode == 0 and again.stdout == "held\n", again.stderr


def test_sigterm_under_two_processes_stops_both_at_the_same_step_and_the_next_run_resumes(workdir, tmp_path):
    """compute.processes 2 (torchrun, two CPU processes): a SIGTERM to the stage reaches both trainers at slightly
    different moments; they agree (an all-reduce at every step boundary) to stop at the same step, the main one
    saves the checkpoint, every process exits within seconds (none is left waiting in a collective for a process
    that already stopped), and the next run resumes from that step."""
    d = shutil.copytree(workdir, tmp_path / "w")
    set_params(d, {"compute.processes": 2, "methods.grpo.max_steps": 8, "methods.grpo.checkpoint_every": 2})
    args = ["--method", "grpo", "--reference", "data/reference", "--data", "data/prepared", "--sft", "models/sft",
            "--out", "models/trained/grpo", "--live", "live",
            "--checkpoints", "ckpt"]
    log = tmp_path / "first.log"
    with log.open("w") as out:
        proc = subprocess.Popen([sys.executable, str(ROOT / "stages/grpo.py"), *args], cwd=d, env=ENV, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
    state = d / "ckpt/state.pt"
    try:
        wait_for_checkpoint(state, proc, log.read_text)
        started = psutil.Process(proc.pid).children(recursive=True)  # torchrun and its two trainers
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) != 0
        _, alive = psutil.wait_procs(started, timeout=30)
        assert not alive, f"left running: {[p.cmdline() for p in alive]}\n" + log.read_text()
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    text = log.read_text()
    step = torch.load(state, weights_only=True)["step"]
    assert 2 < step < 8, (step, text)  # the step boundary after the SIGTERM, not a checkpoint_every step
    assert text.count(f"stopped: SIGTERM (the `dvc` that started this stage ended, or a kill) after step {step} of 8"
                      ) == 2, text  # both processes, the same step
    assert not (d / "models/trained/grpo").exists() and not (d / "live").exists()
    out = run_script(d, "grpo.py", *args)
    assert f"resuming from checkpoint at step {step} of 8" in out.stderr
    assert json.loads((d / "live/train.json").read_text())["steps_done"] == 8


def test_ctrl_c_stops_the_trainer_at_a_step_boundary_with_one_line_and_a_checkpoint(workdir, tmp_path):
    """Ctrl-C (SIGINT) during training is a stop, as SIGTERM is: the step ends, a checkpoint is saved, one
    `stopped:` line (no KeyboardInterrupt traceback), exit status 130, no output written."""
    d = shutil.copytree(workdir, tmp_path / "w")
    set_params(d, {"methods.ppo.max_steps": 8, "methods.ppo.checkpoint_every": 2})
    proc = subprocess.Popen([sys.executable, str(ROOT / "stages/ppo.py"), *PPO_ARGS], cwd=d, env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    state = d / "checkpoints/ppo/state.pt"
    wait_for_checkpoint(state, proc, lambda: "")
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    step = torch.load(state, weights_only=True)["step"]
    assert 2 < step < 8 and "Traceback" not in err and "KeyboardInterrupt" not in err, err
    assert err.strip().splitlines()[-1].startswith(f"stopped: SIGINT (Ctrl-C) after step {step} of 8: a checkpoint")
    assert not (d / "models/trained/ppo").exists() and not (d / "metrics/train/ppo").exists()
