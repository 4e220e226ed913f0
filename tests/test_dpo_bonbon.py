"""BoNBoN (best-of-n distillation) as a DPO entry's loss: the target best-of-n gives, checked by hand, the loss on
given log-probs, and a DPO entry with loss bonbon trained on the reference stage's best and worst of n."""
import json
import math
import shutil

import pytest
import torch
from conftest import run_script, set_params

from detoxkit.dpo_engine import bonbon_loss, bonbon_target


def test_the_target_is_n_minus_1_times_the_harmonic_number_of_n_minus_1():
    assert bonbon_target(2) == 1.0  # (2 - 1) x 1
    assert bonbon_target(4) == pytest.approx(3 * (1 + 1 / 2 + 1 / 3)) == pytest.approx(5.5)
    assert bonbon_target(8) == pytest.approx(7 * (1 + 1 / 2 + 1 / 3 + 1 / 4 + 1 / 5 + 1 / 6 + 1 / 7))
    assert 1 / (2 * bonbon_target(8)) == pytest.approx(0.0275482094, abs=1e-9)  # the authors' beta for n = 8
    # the target is the expected log-ratio gap of best-of-n: (n - 1)(E[log U_max] - E[log U_min]), by Monte Carlo
    u = torch.rand(200_000, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    gap = 3 * (u.max(1).values.log() - u.min(1).values.log()).mean().item()
    assert gap == pytest.approx(bonbon_target(4), rel=0.01)
    with pytest.raises(ValueError):
        bonbon_target(1)


def test_the_loss_is_the_squared_distance_of_the_log_ratio_gap_from_the_target():
    pc, pr = torch.tensor([-10.0, -4.0]), torch.tensor([-12.0, -3.0])
    rc, rr = torch.tensor([-11.0, -5.0]), torch.tensor([-11.0, -5.0])
    # gaps: (-10 + 11) - (-12 + 11) = 2; (-4 + 5) - (-3 + 5) = -1; target 5.5
    assert bonbon_loss(pc, pr, rc, rr, 5.5).tolist() == pytest.approx([(2 - 5.5) ** 2, (-1 - 5.5) ** 2])


def test_the_trainer_computes_bonbon_on_the_summed_log_probs_it_is_given():
    """The engine's DPOTrainer: loss_type stays sigmoid, so TRL hands dpo_loss whole-sequence (summed) log-probs (its
    own ipo would average them per token); dpo_loss then returns (gap - target)^2 and TRL's reward at beta =
    1 / (2 target)."""
    from types import SimpleNamespace

    from detoxkit.dpo_engine import _trainer_class

    fake = SimpleNamespace(beta=1 / (2 * 5.5), accelerator=SimpleNamespace(device="cpu"))
    pc, pr, rc, rr = torch.tensor([-10.0]), torch.tensor([-12.0]), torch.tensor([-11.0]), torch.tensor([-11.0])
    losses, chosen, rejected = _trainer_class(5.5).dpo_loss(fake, pc, pr, rc, rr)
    assert losses.tolist() == pytest.approx([(2 - 5.5) ** 2])
    assert chosen.tolist() == pytest.approx([1 / 11]) and rejected.tolist() == pytest.approx([-1 / 11])


def test_a_bonbon_entry_trains_on_the_reference_pairs(workdir, tmp_path):
    d = shutil.copytree(workdir, tmp_path / "w")
    set_params(d, {"methods.dpo.loss": "bonbon", "methods.dpo.sft_weight": 0.05, "reference.n": 4,
                   "reference.num_prompts": 16})
    run_script(d, "reference.py", "--data", "data/prepared", "--sft", "models/sft", "--out", "data/reference")
    proc = run_script(d, "dpo.py", "--method", "dpo", "--reference", "data/reference", "--data", "data/prepared",
                      "--sft", "models/sft", "--out", "out", "--live", "live", "--checkpoints", "c")
    train = json.loads((d / "live/train.json").read_text())
    assert train["settings"]["loss"] == "bonbon" and train["steps_done"] == 2 and math.isfinite(train["train_loss"])
    assert "loss bonbon: target 5.5 (n = 4)" in proc.stderr
    loss = [float(r.split()[1]) for r in (d / "live/plots/metrics/dpo/loss.tsv").read_text().splitlines()[1:]]
    # at step 1 the adapter is fresh: the policy is the reference, every gap 0, so the loss is target^2 (+ the NLL)
    assert loss[0] >= bonbon_target(4) ** 2 * 0.9


def test_on_policy_dpo_rounds_sample_new_pairs_from_the_trained_policy(workdir, tmp_path):
    """rounds 2: a second round of pairs sampled from the policy after round 1, trained on; the curves go on across
    rounds and the second round's samples count in the cost."""
    d = shutil.copytree(workdir, tmp_path / "w")
    set_params(d, {"methods.dpo.rounds": 2, "reference.n": 2, "reference.num_prompts": 16})
    run_script(d, "reference.py", "--data", "data/prepared", "--sft", "models/sft", "--out", "data/reference")
    proc = run_script(d, "dpo.py", "--method", "dpo", "--reference", "data/reference", "--data", "data/prepared",
                      "--sft", "models/sft", "--out", "out", "--live", "live", "--checkpoints", "c")
    train = json.loads((d / "live/train.json").read_text())
    assert "round 2 of 2:" in proc.stderr and train["rounds_done"] == 2
    assert train["steps_done"] == 4 and train["rollouts"] == 16 * 2 * 2  # two rounds of 2 max_steps; 16 x n, twice
    steps = [int(r.split()[0]) for r in (d / "live/plots/metrics/dpo/loss.tsv").read_text().splitlines()[1:]]
    assert steps == [1, 2, 3, 4]


def test_dpo_rounds_stop_early_when_the_policy_gives_too_few_pairs(workdir, tmp_path):
    """A round whose samples barely differ in reward gives fewer than min_pairs pairs: training stops after the round
    before, says so in one line, and records the rounds it did (its samples still count in the cost). The reward here
    is a Python scorer that ranks the reference samples by length and, once `flat` exists, gives every text the same
    score (as a policy whose samples all score alike would)."""
    d = shutil.copytree(workdir, tmp_path / "w")
    (d / "scorer.py").write_text(
        "from pathlib import Path\n\n\ndef score(texts):\n"
        "    if Path('flat').exists():\n        return [0.5] * len(texts)\n"
        "    return [0.05 + 0.9 * (len(t) % 7) / 6 for t in texts]\n")
    set_params(d, {"methods.dpo.rounds": 3, "methods.dpo.min_pairs": 4, "reference.n": 2,
                   "reference.num_prompts": 16, "reward.model": "python:scorer.py:score"})
    run_script(d, "reference.py", "--data", "data/prepared", "--sft", "models/sft", "--out", "data/reference")
    (d / "flat").write_text("")
    proc = run_script(d, "dpo.py", "--method", "dpo", "--reference", "data/reference", "--data", "data/prepared",
                      "--sft", "models/sft", "--out", "out", "--live", "live", "--checkpoints", "c")
    train = json.loads((d / "live/train.json").read_text())
    assert "round 2: 0 pairs (fewer than methods.dpo.min_pairs 4)" in proc.stderr
    assert "stopping after round 1" in proc.stderr
    assert train["rounds_done"] == 1 and train["steps_done"] == 2
    assert train["rollouts"] == 16 * 2 * 2  # the reference samples and the second round's, which gave no pair
    assert (d / "out/adapter_model.safetensors").is_file()  # round 1's adapter, saved
