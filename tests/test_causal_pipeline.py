"""Causal (decoder-only) policies end to end: `dvc repro` of every stage for GPT-2 and a Llama-style chat
model, with sft off and on."""
import csv
import json

import pytest
from conftest import STAGES, changed_stages, dvc, finite, make_repo, ran_stages, set_params
from make_tiny import tiny_params

EVAL_KEYS = ["toxicity_mean", "toxicity_std", "expected_max_toxicity", "toxicity_probability", "reward_mean",
             "num_samples", "rouge1", "rouge2", "rougeL", "length_mean", "kl_mean", "perplexity_mean", "distinct_2"]


def check_causal_run(repo, arch: str, sft: bool):
    """Every output of a causal run is there and sane, and no prompt reached a response."""
    from detoxkit.config import ComputeSettings
    from detoxkit.models import load_detoxified

    for name in ("baseline", "detoxified"):
        metrics = json.loads((repo / f"metrics/{name}.json").read_text())
        assert metrics["num_prompts"] == 8 and metrics["num_samples"] == 16
        assert all(finite(metrics[k]) for k in EVAL_KEYS)
        with (repo / f"data/samples/{name}.csv").open(newline="") as fh:
            rows = list(csv.DictReader(fh))
        for row in rows:  # the response is the continuation only: at most evaluation.max_new_tokens (12) tokens
            assert 1 <= int(row["length"]) <= 12 and "Summarize the following conversation" not in row["response"]
            assert row["prompt"].startswith("\nSummarize the following conversation.") and "<|" not in row["prompt"]
    summary = json.loads((repo / "metrics/summary.json").read_text())
    assert summary["detox"]["steps_done"] == 4 and finite(summary["after"]["toxicity_mean"])
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


@pytest.mark.parametrize("arch, first", [("gpt2", None), ("llama", "sft")])
def test_causal_policy_runs_the_whole_dag_with_sft_off_and_on(tiny, tmp_path, arch, first):
    """GPT-2 (Conv1D, no pad token) and a Llama-style chat model (prompt.chat_template on) through every stage."""
    repo = make_repo(tmp_path / "repo", tiny_params(str(tiny["dir"]), arch), {"policy.adapter": first})
    assert ran_stages(dvc("repro", cwd=repo).stdout) == sorted(STAGES)
    check_causal_run(repo, arch, sft=first == "sft")
    if arch == "llama":  # the chat markup is in what the policy reads, not in the instruction text
        import datasets
        from transformers import AutoTokenizer

        row = datasets.load_from_disk(str(repo / "data/prepared"))["test"][0]
        shown = AutoTokenizer.from_pretrained(tiny["dir"] / "llama").decode(row["input_ids"])
        assert shown.startswith("<|user|>\n\nSummarize") and shown.endswith("Summary:\n<|eot|>\n<|assistant|>\n")
        assert "<|" not in row["query"]
    set_params(repo, {"lora.r": 2})  # a LoRA change reruns detox (then evaluate and report), nothing before it
    assert changed_stages(repo) == ["detox"]
    dry = dvc("repro", "--dry", cwd=repo).stdout
    assert ran_stages(dry) == ["detox"] and "Stage 'baseline' didn't change" in dry
    set_params(repo, {"lora.r": 4, "policy.adapter": None if first else "sft"})
    assert ran_stages(dvc("repro", cwd=repo).stdout) == ["baseline", "best_of_n", "detox", "evaluate", "report", "sft"]
    check_causal_run(repo, arch, sft=first != "sft")
