"""Kill -9 during PPO or GRPO, then `dvc repro`: with another ppo.max_steps it resumes and ends where an uninterrupted run
with the new max_steps does; with new reward weights it starts again from step 0 and ends where a run on them does."""
import os
import signal
import subprocess
import sys
import time

from conftest import ENV, dvc, make_repo, set_params
from make_tiny import tiny_params


def test_kill_9_during_causal_ppo_then_repro_with_other_max_steps_resumes_and_matches_uninterrupted(tiny, tmp_path):
    over = {"policy.adapter": None, "ppo.max_steps": 6, "ppo.checkpoint_every": 2}
    gpt2 = tiny_params(str(tiny["dir"]), "gpt2")
    ref = make_repo(tmp_path / "ref", gpt2, over)
    dvc("repro", "ppo", cwd=ref)
    repo = make_repo(tmp_path / "repo", gpt2, {**over, "ppo.max_steps": 9})  # started longer, then cut to 6
    _kill_after_first_checkpoint(repo)
    assert not (repo / "models/ppo").exists()  # nothing half-written in the outputs
    assert not (repo / "metrics/ppo_train").exists()

    set_params(repo, {"ppo.max_steps": 6})  # not in the checkpoint's fingerprint: the steps done are kept
    out = dvc("repro", "ppo", cwd=repo)
    log = out.stdout + out.stderr
    assert "resuming from checkpoint at step" in log
    step = int(log.split("resuming from checkpoint at step ")[1].split()[0])
    assert 2 <= step < 6
    for rel in ("metrics/ppo_train/train.json", "metrics/ppo_train/plots/metrics/objective/kl.tsv",
                "metrics/ppo_train/plots/metrics/env/reward_mean.tsv"):
        assert (repo / rel).read_text() == (ref / rel).read_text(), rel
    from safetensors.torch import load_file

    got = load_file(repo / "models/ppo/adapter_model.safetensors")
    want = load_file(ref / "models/ppo/adapter_model.safetensors")
    assert got.keys() == want.keys() and all((got[k] == want[k]).all() for k in got)
    assert not (repo / "checkpoints/ppo").exists()  # finished runs clean up their checkpoint
    assert not list((repo / "metrics").glob(".*.tmp")) and not list((repo / "models").glob(".*.tmp"))


def _kill_after_first_checkpoint(repo, stage="ppo"):
    proc = subprocess.Popen([sys.executable, "-m", "dvc", "repro", stage], cwd=repo, env=ENV,
                            start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    state = repo / f"checkpoints/{stage}/state.pt"
    deadline = time.time() + 300
    while not state.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert state.exists(), "the run ended before its first checkpoint"


def test_kill_9_then_new_reward_weights_in_the_same_folder_train_from_step_0_and_match_a_run_on_them(tiny, tmp_path):
    """The checkpoint's fingerprint covers the reward model's content (its lineage manifest), not only its path:
    weights trained on the old reward are discarded, with a log line that names the reward, and the result equals
    an uninterrupted run on the new reward."""
    import shutil

    import torch
    from transformers import AutoModelForSequenceClassification

    new = shutil.copytree(tiny["dir"] / "reward", tmp_path / "new-reward")
    model = AutoModelForSequenceClassification.from_pretrained(new)
    with torch.no_grad():
        model.classifier.out_proj.bias.add_(torch.tensor([1.0, -1.0]))  # another reward: not a constant shift
    model.save_pretrained(new)
    over = {"policy.adapter": None, "ppo.max_steps": 6, "ppo.checkpoint_every": 2, "dpo.enabled": False}
    ref = make_repo(tmp_path / "ref", tiny["params"], {**over, "reward.model": str(new)})
    dvc("repro", "ppo", cwd=ref)

    reward = shutil.copytree(tiny["dir"] / "reward", tmp_path / "reward")  # the old weights, then the new ones
    repo = make_repo(tmp_path / "repo", tiny["params"], {**over, "reward.model": str(reward)})
    _kill_after_first_checkpoint(repo)
    for f in new.iterdir():
        shutil.copy(f, reward / f.name)
    out = dvc("repro", "ppo", cwd=repo)
    log = out.stdout + out.stderr
    assert "resuming" not in log
    assert "was made from other inputs: reward model changed since; discarding it and starting from step 0" in log
    from safetensors.torch import load_file

    got = load_file(repo / "models/ppo/adapter_model.safetensors")
    want = load_file(ref / "models/ppo/adapter_model.safetensors")
    assert got.keys() == want.keys() and all((got[k] == want[k]).all() for k in got)
    for rel in ("metrics/ppo_train/train.json", "metrics/ppo_train/plots/metrics/env/reward_mean.tsv"):
        assert (repo / rel).read_text() == (ref / rel).read_text(), rel


def test_kill_9_during_seq2seq_grpo_then_repro_resumes_and_matches_an_uninterrupted_run(tiny, tmp_path):
    """GRPO's checkpoints follow PPO's rules: kill -9 after the first one, `dvc repro` resumes from it, and the
    adapter, train.json and curves are bit-identical to a run that was never killed (T5: the seq2seq policy)."""
    over = {"policy.adapter": None, "grpo.max_steps": 6, "grpo.checkpoint_every": 2, "dpo.enabled": False}
    ref = make_repo(tmp_path / "ref", tiny["params"], over)
    dvc("repro", "grpo", cwd=ref)
    repo = make_repo(tmp_path / "repo", tiny["params"], over)
    _kill_after_first_checkpoint(repo, "grpo")
    assert not (repo / "models/grpo").exists() and not (repo / "metrics/grpo_train").exists()
    out = dvc("repro", "grpo", cwd=repo)
    log = out.stdout + out.stderr
    step = int(log.split("resuming from checkpoint at step ")[1].split()[0])
    assert 2 <= step < 6
    for rel in ("metrics/grpo_train/train.json", "metrics/grpo_train/plots/metrics/grpo/kl.tsv",
                "metrics/grpo_train/plots/metrics/env/reward_mean.tsv",
                "metrics/grpo_train/plots/metrics/grpo/clip_fraction.tsv"):
        assert (repo / rel).read_text() == (ref / rel).read_text(), rel
    from safetensors.torch import load_file

    got = load_file(repo / "models/grpo/adapter_model.safetensors")
    want = load_file(ref / "models/grpo/adapter_model.safetensors")
    assert got.keys() == want.keys() and all((got[k] == want[k]).all() for k in got)
    assert not (repo / "checkpoints/grpo").exists()
