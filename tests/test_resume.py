"""Kill -9 during PPO or GRPO, then `dvc repro`: with another methods.ppo.max_steps it resumes and ends where an
uninterrupted run with the new max_steps does; with new reward weights it starts again from step 0 and ends where a run on them does."""
import os
import signal
import subprocess
import sys
import time

from conftest import ENV, copy_repo, dvc, make_repo, set_params
from make_tiny import tiny_params

NO_DPO = {"methods.dpo.enabled": False, "reference.num_prompts": 0}  # train@NAME needs no reference samples then


def twins(tmp_path, params: dict, over: dict, then: dict | None = None):
    """(ref, repo): two repositories whose stages before training (lineage, prepare, check, sft, reference) ran
    once, in ref, before the copy; `then` is set in repo alone (a stage it changes reruns there)."""
    ref = make_repo(tmp_path / "ref", params, over)
    dvc("repro", "reference", cwd=ref)
    repo = copy_repo(ref, tmp_path / "repo")
    set_params(repo, then or {})
    return ref, repo


def test_kill_9_during_causal_ppo_then_repro_with_other_max_steps_resumes_and_matches_uninterrupted(tiny, tmp_path):
    over = {"policy.adapter": None, "methods.ppo.max_steps": 6, "methods.ppo.checkpoint_every": 2, **NO_DPO}
    gpt2 = tiny_params(str(tiny["dir"]), "gpt2")
    ref, repo = twins(tmp_path, gpt2, over, {"methods.ppo.max_steps": 9})  # repo: started longer, then cut to 6
    dvc("repro", "train@ppo", cwd=ref)
    _kill_after_first_checkpoint(repo)
    assert not (repo / "models/trained/ppo").exists()  # nothing half-written in the outputs
    assert not (repo / "metrics/train/ppo").exists()

    set_params(repo, {"methods.ppo.max_steps": 6})  # not in the checkpoint's fingerprint: the steps done are kept
    out = dvc("repro", "train@ppo", cwd=repo)
    log = out.stdout + out.stderr
    assert "resuming from checkpoint at step" in log
    step = int(log.split("resuming from checkpoint at step ")[1].split()[0])
    assert 2 <= step < 6
    for rel in ("metrics/train/ppo/train.json", "metrics/train/ppo/plots/metrics/objective/kl.tsv",
                "metrics/train/ppo/plots/metrics/env/reward_mean.tsv"):
        assert (repo / rel).read_text() == (ref / rel).read_text(), rel
    from safetensors.torch import load_file

    got = load_file(repo / "models/trained/ppo/adapter_model.safetensors")
    want = load_file(ref / "models/trained/ppo/adapter_model.safetensors")
    assert got.keys() == want.keys() and all((got[k] == want[k]).all() for k in got)
    assert not (repo / "checkpoints/ppo").exists()  # finished runs clean up their checkpoint
    assert not list((repo / "metrics/train").glob(".*.tmp")) and not list((repo / "models/trained").glob(".*.tmp"))


def _kill_after_first_checkpoint(repo, method="ppo"):
    proc = subprocess.Popen([sys.executable, "-m", "dvc", "repro", f"train@{method}"], cwd=repo, env=ENV,
                            start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    state = repo / f"checkpoints/{method}/state.pt"
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
    over = {"policy.adapter": None, "methods.ppo.max_steps": 6, "methods.ppo.checkpoint_every": 2, **NO_DPO}
    reward = shutil.copytree(tiny["dir"] / "reward", tmp_path / "reward")  # the old weights, then the new ones
    ref, repo = twins(tmp_path, tiny["params"], {**over, "reward.model": str(new)}, {"reward.model": str(reward)})
    dvc("repro", "train@ppo", cwd=ref)
    _kill_after_first_checkpoint(repo)
    for f in new.iterdir():
        shutil.copy(f, reward / f.name)
    out = dvc("repro", "train@ppo", cwd=repo)
    log = out.stdout + out.stderr
    assert "resuming" not in log
    assert "was made from other inputs: reward model changed since; discarding it and starting from step 0" in log
    from safetensors.torch import load_file

    got = load_file(repo / "models/trained/ppo/adapter_model.safetensors")
    want = load_file(ref / "models/trained/ppo/adapter_model.safetensors")
    assert got.keys() == want.keys() and all((got[k] == want[k]).all() for k in got)
    for rel in ("metrics/train/ppo/train.json", "metrics/train/ppo/plots/metrics/env/reward_mean.tsv"):
        assert (repo / rel).read_text() == (ref / rel).read_text(), rel


def test_kill_9_during_seq2seq_grpo_then_repro_resumes_and_matches_an_uninterrupted_run(tiny, tmp_path):
    """GRPO's checkpoints follow PPO's rules: kill -9 after the first one, `dvc repro` resumes from it, and the
    adapter, train.json and curves are bit-identical to a run that was never killed (T5: the seq2seq policy)."""
    over = {"policy.adapter": None, "methods.grpo.max_steps": 6, "methods.grpo.checkpoint_every": 2, **NO_DPO}
    ref, repo = twins(tmp_path, tiny["params"], over)
    dvc("repro", "train@grpo", cwd=ref)
    _kill_after_first_checkpoint(repo, "grpo")
    assert not (repo / "models/trained/grpo").exists() and not (repo / "metrics/train/grpo").exists()
    out = dvc("repro", "train@grpo", cwd=repo)
    log = out.stdout + out.stderr
    step = int(log.split("resuming from checkpoint at step ")[1].split()[0])
    assert 2 <= step < 6
    for rel in ("metrics/train/grpo/train.json", "metrics/train/grpo/plots/metrics/grpo/kl.tsv",
                "metrics/train/grpo/plots/metrics/env/reward_mean.tsv",
                "metrics/train/grpo/plots/metrics/grpo/clip_fraction.tsv"):
        assert (repo / rel).read_text() == (ref / rel).read_text(), rel
    from safetensors.torch import load_file

    got = load_file(repo / "models/trained/grpo/adapter_model.safetensors")
    want = load_file(ref / "models/trained/grpo/adapter_model.safetensors")
    assert got.keys() == want.keys() and all((got[k] == want[k]).all() for k in got)
    assert not (repo / "checkpoints/grpo").exists()
