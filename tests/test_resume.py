"""Kill -9 during PPO (a causal policy), then `dvc repro` with another ppo.max_steps: it resumes and ends where an
uninterrupted run with the new max_steps does."""
import os
import signal
import subprocess
import sys
import time

from conftest import ENV, dvc, make_repo, set_params
from make_tiny import tiny_params


def test_kill_9_during_causal_detox_then_repro_with_other_max_steps_resumes_and_matches_uninterrupted(tiny, tmp_path):
    over = {"policy.adapter": None, "ppo.max_steps": 6, "ppo.checkpoint_every": 2}
    gpt2 = tiny_params(str(tiny["dir"]), "gpt2")
    ref = make_repo(tmp_path / "ref", gpt2, over)
    dvc("repro", "detox", cwd=ref)
    repo = make_repo(tmp_path / "repo", gpt2, {**over, "ppo.max_steps": 9})  # started longer, then cut to 6
    proc = subprocess.Popen([sys.executable, "-m", "dvc", "repro", "detox"], cwd=repo, env=ENV,
                            start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    state = repo / "checkpoints/detox/state.pt"
    deadline = time.time() + 300
    while not state.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert state.exists(), "the run ended before its first checkpoint"
    assert not (repo / "models/ppo").exists()  # nothing half-written in the outputs
    assert not (repo / "metrics/detox").exists()

    set_params(repo, {"ppo.max_steps": 6})  # not in the checkpoint's fingerprint: the steps done are kept
    out = dvc("repro", "detox", cwd=repo)
    log = out.stdout + out.stderr
    assert "resuming from checkpoint at step" in log
    step = int(log.split("resuming from checkpoint at step ")[1].split()[0])
    assert 2 <= step < 6
    for rel in ("metrics/detox/train.json", "metrics/detox/plots/metrics/objective/kl.tsv",
                "metrics/detox/plots/metrics/env/reward_mean.tsv"):
        assert (repo / rel).read_text() == (ref / rel).read_text(), rel
    from safetensors.torch import load_file

    got = load_file(repo / "models/ppo/adapter_model.safetensors")
    want = load_file(ref / "models/ppo/adapter_model.safetensors")
    assert got.keys() == want.keys() and all((got[k] == want[k]).all() for k in got)
    assert not (repo / "checkpoints/detox").exists()  # finished runs clean up their checkpoint
    assert not list((repo / "metrics").glob(".*.tmp")) and not list((repo / "models").glob(".*.tmp"))
