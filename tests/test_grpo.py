"""GRPO's arithmetic (detoxkit.grpo_engine) proved against hand-computed cases, and on a tiny real policy with LoRA."""
import math

import pytest
import torch

from detoxkit.grpo_engine import grpo_loss, group_advantages, k3_kl

EPS = 1e-4


def test_advantages_of_a_two_prompt_batch_by_hand():
    rewards = torch.tensor([1.0, 3.0, 0.0, 0.0], dtype=torch.float64)  # prompt A: 1 and 3; prompt B: 0 and 0
    got = group_advantages(rewards, 2, eps=EPS)
    # prompt A: mean 2, std (Bessel) sqrt(((1 - 2)^2 + (3 - 2)^2) / 1) = sqrt(2); prompt B: all equal, 0
    a = 1 / (math.sqrt(2) + EPS)
    assert got.tolist() == pytest.approx([-a, a, 0.0, 0.0], abs=1e-12)
    assert group_advantages(rewards, 2, scale_rewards=False).tolist() == [-1.0, 1.0, 0.0, 0.0]  # Dr. GRPO
    with pytest.raises(ValueError, match="do not split into groups of 3"):
        group_advantages(rewards, 3)


def _direct(logp, old, ref, adv, lengths, clip, beta):
    """The loss and d loss / d logp, token by token in plain floats: what grpo_loss must equal."""
    n = len(logp)
    loss, grad = 0.0, [[0.0] * len(row) for row in logp]
    for i in range(n):
        for t in range(lengths[i]):
            ratio = math.exp(logp[i][t] - old[i][t])
            unclipped, clipped = ratio * adv[i], min(max(ratio, 1 - clip), 1 + clip) * adv[i]
            d = ref[i][t] - logp[i][t]
            kl = math.exp(d) - d - 1
            loss += -(min(unclipped, clipped) - beta * kl) / lengths[i] / n
            d_surrogate = ratio * adv[i] if unclipped <= clipped else 0.0  # the clipped side is constant in logp
            d_kl = -math.exp(d) + 1
            grad[i][t] = -(d_surrogate - beta * d_kl) / lengths[i] / n
    return loss, grad


def test_loss_and_gradient_of_a_hand_made_two_prompt_batch_match_a_direct_computation():
    # 4 responses (2 prompts x 2), up to 3 tokens; the last token of responses 1 and 3 is padding
    logp = [[-1.0, -2.0, -0.5], [-0.3, -1.2, 0.0], [-2.0, -0.1, -0.7], [-0.9, -0.4, 0.0]]
    old = [[-1.0, -2.4, -0.5], [-0.3, -1.0, 0.0], [-2.0, -0.1, -0.2], [-0.9, -0.4, 0.0]]  # ratios of 1.49, 0.82, 0.61
    ref = [[-1.1, -2.0, -0.6], [-0.2, -1.3, 0.0], [-1.8, -0.3, -0.7], [-0.9, -0.5, 0.0]]
    lengths = [3, 2, 3, 2]
    rewards = torch.tensor([2.0, -1.0, 0.5, 0.5])  # prompt B's rewards are equal
    adv = group_advantages(rewards, 2, eps=EPS)
    clip, beta = 0.2, 0.04
    want_loss, want_grad = _direct(logp, old, ref, adv.tolist(), lengths, clip, beta)

    x = torch.tensor(logp, dtype=torch.float64, requires_grad=True)
    mask = torch.tensor([[1.0] * n + [0.0] * (3 - n) for n in lengths], dtype=torch.float64)
    loss, stats = grpo_loss(x, torch.tensor(old, dtype=torch.float64), torch.tensor(ref, dtype=torch.float64),
                            adv.to(torch.float64), mask, clip, beta)
    loss.backward()
    assert loss.item() == pytest.approx(want_loss, abs=1e-12)
    assert x.grad.tolist() == [pytest.approx(row, abs=1e-12) for row in want_grad]
    assert stats["clip_fraction"] == pytest.approx(1 / 10)  # response 0's second token: ratio 1.49 > 1.2, A > 0


def test_a_group_with_equal_rewards_contributes_nothing():
    logp = torch.tensor([[-1.0, -2.0], [-0.5, -0.7], [-1.5, -0.2], [-0.3, -0.9]], requires_grad=True)
    adv = group_advantages(torch.tensor([1.0, 4.0, 2.5, 2.5]), 2)
    assert adv[2:].tolist() == [0.0, 0.0]
    loss, _ = grpo_loss(logp, logp.detach(), logp.detach(), adv, torch.ones(4, 2), clip=0.2, beta=0.0)
    loss.backward()
    assert logp.grad[2:].abs().sum() == 0 and logp.grad[:2].abs().sum() > 0


def _tiny_policy(tiny, rank_seed=0):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from detoxkit.settings import LoraSettings
    from detoxkit.models import attach_lora

    torch.manual_seed(rank_seed)
    model = AutoModelForCausalLM.from_pretrained(tiny["dir"] / "gpt2")
    tok = AutoTokenizer.from_pretrained(tiny["dir"] / "gpt2")
    tok.pad_token = tok.pad_token or tok.eos_token
    return attach_lora(model, LoraSettings(r=4, alpha=8, dropout=0.0, target_modules="auto")), tok


def test_the_kl_is_zero_at_step_0_on_a_real_policy(tiny):
    from detoxkit.generation import batch_logprobs

    model, tok = _tiny_policy(tiny)
    queries = [tok("Summary: the meeting")["input_ids"], tok("Say hello")["input_ids"]]
    responses = [tok(" moved to Monday.")["input_ids"], tok(" to Anna")["input_ids"]]
    logp, mask = batch_logprobs(model, tok, queries, responses, "cpu")
    with model.disable_adapter():  # the reference: the starting policy
        ref, _ = batch_logprobs(model, tok, queries, responses, "cpu")
    assert (k3_kl(logp, ref) * mask).abs().max().item() == 0.0  # a fresh LoRA adapter changes nothing yet


def test_one_step_raises_the_log_probability_of_the_highest_advantage_response(tiny):
    from detoxkit.generation import batch_logprobs

    model, tok = _tiny_policy(tiny)
    query = tok("Summary: the meeting")["input_ids"]
    responses = [tok(t)["input_ids"] for t in (" was fine.", " moved to Monday.", " is cancelled.", " went well.")]
    rewards = torch.tensor([0.0, 3.0, -1.0, 1.0])  # response 1 has the highest advantage, 2 the lowest
    adv = group_advantages(rewards, 4)
    queries = [query] * 4

    def sequence_logp():
        logp, mask = batch_logprobs(model, tok, queries, responses, "cpu")
        return logp, mask, (logp * mask).sum(dim=1)

    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=1e-2)
    logp, mask, before = sequence_logp()
    with model.disable_adapter():
        ref, _ = batch_logprobs(model, tok, queries, responses, "cpu")
    loss, _ = grpo_loss(logp, logp.detach(), ref.detach(), adv, mask, clip=0.2, beta=0.04)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    with torch.no_grad():
        _, _, after = sequence_logp()
    change = (after - before.detach()).tolist()
    assert change[1] > 0 and change[2] < 0 and change[1] == max(change), change


def _settings(**over):
    from detoxkit.settings import GRPOSettings, LoraSettings

    values = dict(algorithm="grpo", enabled=True, group_size=2, batch_size=2, mini_batch_size=4, epochs=1, max_steps=1,
                  learning_rate=1e-2, beta=0.04, clip=0.2, scale_rewards=True, reward_transform="none", max_grad_norm=1.0,
                  checkpoint_every=0,
                  lora=LoraSettings(r=4, alpha=8, dropout=0.0, target_modules="auto"))
    return GRPOSettings(**{**values, **over})


def test_the_engine_step_starts_at_kl_0_counts_tied_groups_and_moves_only_the_adapter(tiny):
    """GRPOEngine.step on a tiny GPT-2: the first optimizer step of a fresh adapter sees KL exactly 0 and ratio 1
    (nothing clipped); a group whose rewards tie is counted in zero_std_share; only LoRA weights change."""
    from detoxkit.grpo_engine import GRPOEngine

    model, tok = _tiny_policy(tiny)
    base = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    gen = type("Gen", (), {"batch_size": 4, "min_length": 1, "top_k": 0, "top_p": 1.0, "do_sample": True})
    engine = GRPOEngine(model, tok, _settings(), gen, "cpu")
    queries = [tok("Summary: the meeting")["input_ids"]] * 2 + [tok("Say hello")["input_ids"]] * 2
    responses = [tok(t)["input_ids"] for t in (" was fine.", " moved.", " to Anna", " to Ben")]
    before = engine.trainable_state()
    stats = engine.step(queries, responses, [1.0, 3.0, 0.5, 0.5])  # prompt 2's rewards tie
    assert stats["grpo/kl"] == 0.0 and stats["grpo/clip_fraction"] == 0.0
    assert stats["grpo/zero_std_share"] == 0.5 and stats["grpo/reward_std"] == pytest.approx(math.sqrt(2) / 2)
    after = engine.trainable_state()
    assert any(not torch.equal(before[k], after[k]) for k in before)
    assert all(torch.equal(p, base[n]) for n, p in model.named_parameters() if not p.requires_grad)
    state = engine.state_dict()  # a checkpoint restores weights and optimizer; a foreign one is refused whole
    engine.load_state_dict(state)
    with pytest.raises(ValueError, match="do not fit this policy's GRPO adapter"):
        engine.load_state_dict({**state, "weights": {"x": torch.zeros(1)}})


def test_grpo_settings_are_refused_with_the_key_and_the_reason():
    from detoxkit.settings import LoraSettings
    from detoxkit.errors import ParamsError

    with pytest.raises(ParamsError, match=r"methods.grpo.mini_batch_size \(3\) must divide methods.grpo.batch_size x "
                                          r"methods.grpo.group_size \(2 x 2 = 4 responses a step\)"):
        _settings(mini_batch_size=3).check("methods.grpo")
    with pytest.raises(ParamsError, match="methods.grpo.group_size must be >= 2"):
        _settings(group_size=1).check("methods.grpo")
    with pytest.raises(ParamsError, match="methods.grpo.lora.dropout is 0.05; must be 0: GRPO's ratio and KL compare"):
        _settings(lora=LoraSettings(r=4, alpha=8, dropout=0.05, target_modules="auto")).check("methods.grpo")
    with pytest.raises(ParamsError, match=r"methods.grpo.clip must be in \(0, 1\)"):
        _settings(clip=1.5).check("methods.grpo")


def test_publish_method_grpo_with_grpo_off_is_refused(tmp_path):
    import shutil

    from conftest import ROOT, set_params
    from detoxkit.config import load_params
    from detoxkit.errors import ParamsError

    shutil.copy(ROOT / "params.yaml", tmp_path / "params.yaml")
    set_params(tmp_path, {"publish.method": "grpo", "methods.grpo.enabled": False})
    with pytest.raises(ParamsError, match="publish.method is grpo, but methods.grpo.enabled is false"):
        load_params(tmp_path / "params.yaml")
    set_params(tmp_path, {"publish.method": "sft"})
    with pytest.raises(ParamsError, match="publish.method"):
        load_params(tmp_path / "params.yaml")


def _entry(after, hi, crossed=False, method="ppo"):
    from detoxkit.compare import outcome

    entry = {"method": method, "label": {"best_of_n": "best-of-N"}.get(method, method.upper()),
             "trains_weights": method != "best_of_n", "enabled": True, "num_prompts": 30, "min_pairs": 20,
             "toxicity": {"after": after, "diff_ci_low": hi - 0.1, "diff_ci_high": hi},
             "guards": {"kl_exceeded": crossed, "judge_disagrees": "n/a"}}
    return {**entry, "outcome": outcome(entry)}  # as method_entry writes it


def test_the_answer_and_the_published_method_follow_the_comparison_files():
    from detoxkit.compare import best_method, choose_published

    entries = {"ppo": _entry(0.30, -0.01), "dpo": _entry(0.25, 0.02, method="dpo"),
               "grpo": _entry(0.20, -0.05, method="grpo"), "best_of_n": _entry(0.10, -0.1, method="best_of_n")}
    # DPO's interval reaches 0; best-of-N is lowest and qualifies, but has no weights: GRPO, with a note
    assert best_method(entries) == "best_of_n" and best_method(entries, trained_only=True) == "grpo"
    method, why = choose_published(entries, "best")
    assert method == "grpo" and "best-of-N lowered toxicity most, but it is a sampling procedure" in why
    entries["grpo"] = _entry(0.20, -0.05, crossed=True, method="grpo")  # a crossed guard disqualifies
    assert choose_published({k: v for k, v in entries.items() if k != "best_of_n"}, "best") == (
        "ppo", "the report's answer: PPO lowered toxicity most with no guard crossed")
    entries["ppo"] = _entry(0.30, 0.01)  # nothing qualifies: nothing is published, and why
    method, why = choose_published({k: v for k, v in entries.items() if k != "best_of_n"}, "best")
    assert method is None and why == "no method lowered toxicity (its interval below 0) without crossing a guard"
    assert choose_published(entries, "dpo")[0] == "dpo"  # a method by name, whatever the answer
    with pytest.raises(Exception, match="publish.method is dpo, but its comparison file says it did not run"):
        choose_published({**entries, "dpo": {"method": "dpo", "trains_weights": True, "enabled": False}}, "dpo")


# --- variational best-of-N: the reward log F(r), F the smoothed CDF of the prompt's reference rewards -------------
def test_vbon_reward_is_the_log_of_the_smoothed_cdf_computed_by_hand():
    from detoxkit.stats import vbon_reward

    refs = [0.1, 0.5, 0.5, 0.9]  # M = 4: F(r) = (#below + #equal / 2 + 1/2) / 5
    got = vbon_reward([0.0, 0.1, 0.3, 0.5, 0.7, 0.9, 2.0], refs)
    want = [0.5 / 5, 1.0 / 5, 1.5 / 5, 2.5 / 5, 3.5 / 5, 4.0 / 5, 4.5 / 5]  # below all; a tie counts half; above all
    assert got == pytest.approx([math.log(w) for w in want])
    assert all(math.isfinite(v) for v in got) and max(got) < 0  # never log 0, never log 1


def test_vbon_reward_is_monotone_and_a_flat_reference_gives_no_signal():
    import numpy as np

    from detoxkit.stats import vbon_reward

    rng = np.random.default_rng(0)
    refs, r = rng.normal(size=16), np.sort(rng.normal(size=200) * 2)
    assert np.all(np.diff(vbon_reward(r, refs)) >= 0)  # a higher reward never ranks lower
    flat = vbon_reward([-3.0, 0.2, 0.2, 5.0], [0.2] * 4)  # every reference the same: nothing to rank against
    assert flat.tolist() == [math.log(0.5)] * 4  # one value: the group's advantage is 0, no NaN
    from detoxkit.grpo_engine import group_advantages

    assert torch.equal(group_advantages(torch.tensor(flat), 4), torch.zeros(4))
    with pytest.raises(Exception, match="reference rewards must be finite"):
        vbon_reward([0.0], [float("nan"), 1.0])


def test_a_vbon_grpo_entry_trains_on_the_reference_prompts_and_logs_both_rewards(workdir, tmp_path):
    """methods.grpo.reward_transform vbon: GRPO's step reward is the transform of the score against the reference
    samples of the same prompt; train.json and the curves keep the raw score, and vbon/reward_mean is a log CDF."""
    import json
    import shutil

    from conftest import run_script, set_params

    d = shutil.copytree(workdir, tmp_path / "w")
    set_params(d, {"methods.grpo.reward_transform": "vbon", "methods.grpo.scale_rewards": False,
                   "methods.grpo.beta": 1 / 3, "methods.grpo.max_steps": 2, "methods.grpo.checkpoint_every": 0,
                   "reference.num_prompts": 8, "reference.n": 4})
    run_script(d, "reference.py", "--data", "data/prepared", "--sft", "models/sft", "--out", "data/reference")
    proc = run_script(d, "grpo.py", "--method", "grpo", "--reference", "data/reference", "--data", "data/prepared",
                      "--sft", "models/sft", "--out", "out", "--live", "live", "--checkpoints", "c")
    assert "vbon reward: log CDF among the reference rewards of 8 train prompts" in proc.stderr
    rows = (d / "live/plots/metrics/vbon/reward_mean.tsv").read_text().splitlines()
    values = [float(r.split()[1]) for r in rows[1:]]
    assert len(values) == 2 and all(math.log(0.5 / 5) <= v <= math.log(4.5 / 5) for v in values)
    train = json.loads((d / "live/train.json").read_text())
    assert train["settings"]["reward_transform"] == "vbon" and math.isfinite(train["last_reward_mean"])
    drawn = json.loads((d / "data/reference/summary.json").read_text())
    own = 2 * train["settings"]["batch_size"] * train["settings"]["group_size"]  # 2 steps of its own rollouts
    assert train["rollouts"] == own + 8 * 4  # and the reference samples it ranks against (8 prompts x 4)
    timing = json.loads((d / "live/timing.json").read_text())
    assert timing["reference_wall_s"] == drawn["wall_s"] and timing["wall_s"] > drawn["wall_s"]
    set_params(d, {"reference.num_prompts": 0})  # no samples drawn: refused before anything runs
    proc = run_script(d, "grpo.py", "--method", "grpo", "--reference", "data/reference", "--data", "data/prepared",
                      "--sft", "models/sft", "--out", "out2", "--live", "live2", "--checkpoints", "c", check=False)
    assert proc.returncode == 2 and "methods.grpo.reward_transform is vbon, which reads each prompt's reference" in \
        proc.stderr
