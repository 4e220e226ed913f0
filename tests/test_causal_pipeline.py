"""Causal (decoder-only) policies end to end: `dvc repro` of every stage for GPT-2 (the Llama-style chat model:
test_chat_pipeline.py)."""
import csv
import json
import os

import yaml
from conftest import STAGES, changed_stages, check_model_card_snippet, check_modes, dvc, finite, make_repo, ran_stages, set_params
from make_tiny import tiny_params

EVAL_KEYS = ["toxicity_mean", "toxicity_std", "expected_max_toxicity", "toxicity_probability", "reward_mean",
             "num_samples", "rouge1", "rouge2", "rougeL", "length_mean", "kl_mean", "perplexity_mean", "distinct_2"]


def check_causal_run(repo, arch: str, sft: bool, trained=("ppo", "dpo", "grpo")):
    """Every output of a causal run is there and sane, and no prompt reached a response (`trained`: the methods on)."""
    from detoxkit.settings import ComputeSettings
    from detoxkit.models import load_detoxified

    for name in ("baseline", *(m for m in trained if m != "dpo")):
        metrics = json.loads((repo / f"metrics/{'' if name == 'baseline' else 'evaluation/'}{name}.json").read_text())
        assert metrics["num_prompts"] == 8 and metrics["num_samples"] == 16
        assert all(finite(metrics[k]) for k in EVAL_KEYS)
        with (repo / f"data/samples/{name}.csv").open(newline="") as fh:
            rows = list(csv.DictReader(fh))
        for row in rows:  # the response is the continuation only: at most evaluation.max_new_tokens (12) tokens
            assert 1 <= int(row["length"]) <= 12 and "Summarize the following conversation" not in row["response"]
            assert row["prompt"].startswith("\nSummarize the following conversation.") and "<|" not in row["prompt"]
    summary = json.loads((repo / "metrics/compare/ppo.json").read_text())
    assert summary["training"]["steps_done"] == 4 and finite(summary["after"]["toxicity_mean"])
    # publish.method best: the folder holds the method the comparison files name, and its card says why; on these 8
    # paired prompts (below report.min_pairs) no method can be judged, so nothing is published: PPO by name, then
    from detoxkit.compare import choose_published
    entries = {m: json.loads((repo / f"metrics/compare/{m}.json").read_text()) for m in ("ppo", "dpo", "grpo", "best_of_n")}
    method, why = choose_published(entries, "best")
    if method is None:
        assert [p.name for p in (repo / "models/detoxified").iterdir()] == ["README.md"]
        assert f"publish.method is best, but {why}" in (repo / "models/detoxified/README.md").read_text()
        set_params(repo, {"publish.method": "ppo"})
        assert ran_stages(dvc("repro", "publish", cwd=repo).stdout) == ["publish"]
        method, why = choose_published(entries, "ppo")
    published = (repo / "models/detoxified/adapter_model.safetensors").read_bytes()
    assert published == (repo / f"models/trained/{method}/adapter_model.safetensors").read_bytes()
    assert f"detoxified with {entries[method]['label']}" in (repo / "models/detoxified/README.md").read_text()
    assert f"Why this method: {why}." in (repo / "models/detoxified/README.md").read_text()
    if "grpo" in trained:
        grpo = json.loads((repo / "metrics/train/grpo/train.json").read_text())
        assert grpo["steps_done"] == 3 and grpo["rollouts"] == 3 * 4 * 2
        assert json.loads((repo / "models/trained/grpo/adapter_config.json").read_text())["task_type"] == "CAUSAL_LM"
    assert json.loads((repo / "metrics/sft.json").read_text())["enabled"] is sft
    assert (repo / "models/detoxified/start_adapter").exists() is sft
    adapter = json.loads((repo / "models/detoxified/adapter_config.json").read_text())
    assert adapter["task_type"] == "CAUSAL_LM"
    assert sorted(adapter["target_modules"]) == {"gpt2": ["c_attn"], "llama": ["q_proj", "v_proj"]}[arch]
    model, tok, _ = load_detoxified(repo / "models/detoxified",
                                    ComputeSettings(device="cpu", dtype="float32", compile_generation=False))
    out = model.generate(input_ids=tok(["Summary:"], return_tensors="pt")["input_ids"], max_new_tokens=3,
                         do_sample=False, pad_token_id=tok.pad_token_id)
    assert out.shape[1] > 1
    card = yaml.safe_load((repo / "models/detoxified/README.md").read_text().split("---\n")[1])
    assert card["pipeline_tag"] == "text-generation" and card["library_name"] == "peft"
    assert "base_model" not in card  # a local folder: the Hub wants an id there
    code = check_model_card_snippet(repo)
    assert ("subfolder='start_adapter'" in code) is sft and "AutoModelForCausalLM" in code
    if "dpo" in trained:
        from test_pipeline import check_dpo_run

        check_dpo_run(repo, causal=True)  # DPO on a causal policy: continuations only, prompts as prepare built them


def test_gpt2_runs_the_whole_dag_with_sft(tiny, tmp_path):
    """GPT-2 (Conv1D, no pad token) through every stage, with its sft adapter merged under the PPO adapter. Causal
    runs without sft: the prompt-only half of test_chat_pipeline.py and test_resume.py."""
    repo = make_repo(tmp_path / "repo", tiny_params(str(tiny["dir"]), "gpt2"), {"policy.adapter": "sft"})
    mask = os.umask(0o002)  # a shared group's umask: outputs group-writable (test_pipeline.py checks 0022)
    try:
        assert ran_stages(dvc("repro", cwd=repo).stdout) == sorted(STAGES)
    finally:
        os.umask(mask)
    check_modes(repo, 0o002)
    check_causal_run(repo, "gpt2", sft=True)
    set_params(repo, {"methods.ppo.lora.r": 2})  # a LoRA change reruns PPO's stages, report and publish; none before
    assert changed_stages(repo) == ["publish", "report", "train@ppo"]
    set_params(repo, {"methods.ppo.lora.r": 4, "methods.grpo.beta": 0.1})  # GRPO's own settings: GRPO's stages alone
    assert changed_stages(repo) == ["publish", "report", "train@grpo"]
    dry = dvc("repro", "--dry", cwd=repo).stdout
    assert ran_stages(dry) == ["publish", "report", "train@grpo"] and "Stage 'baseline' didn't change" in dry
