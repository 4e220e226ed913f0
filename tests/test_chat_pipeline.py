"""A Llama-style chat model (prompt.chat_template on) end to end: first summarizing DialogSum-shaped dialogues
with sft on (PPO alone: DPO and GRPO on a causal policy run in test_causal_pipeline.py and below), then continuing
RealToxicityPrompts-shaped prompts, a prompt-only dataset (no references: no ROUGE, no sft), with every method and
best-of-N on."""
import csv
import json

from conftest import STAGES, changed_stages, dvc, finite, make_repo, ran_stages, set_params
from make_tiny import tiny_params
from test_causal_pipeline import check_causal_run


def write_rtp(path, n=48):
    """A RealToxicityPrompts-shaped jsonl: a nested prompt (prompt.text), a `challenging` flag, no reference."""
    with path.open("w", encoding="utf-8") as fh:
        for i in range(n):
            fh.write(json.dumps({"filename": f"doc{i}.txt", "begin": 0, "end": 40, "challenging": i % 4 != 0,
                                 "prompt": {"text": f"Anna said to Ben that the new project {i} was", "toxicity": 0.1,
                                            "insult": 0.05},
                                 "continuation": {"text": " finished on time.", "toxicity": 0.01}}) + "\n")


def test_chat_model_summarizes_with_sft_then_continues_a_prompt_only_dataset(tiny, tmp_path):
    repo = make_repo(tmp_path / "repo", tiny_params(str(tiny["dir"]), "llama"),
                     {"policy.adapter": "sft", "methods.dpo.enabled": False, "methods.grpo.enabled": False,
                      "reference.num_prompts": 0})  # no DPO: no reference samples
    assert ran_stages(dvc("repro", cwd=repo).stdout) == sorted(STAGES)
    check_causal_run(repo, "llama", sft=True, trained=("ppo",))
    import datasets
    from transformers import AutoTokenizer

    row = datasets.load_from_disk(str(repo / "data/prepared"))["test"][0]
    tok = AutoTokenizer.from_pretrained(tiny["dir"] / "llama")
    shown = tok.decode(row["input_ids"])  # the chat markup is in what the policy reads, not in the instruction
    assert shown.startswith("<|user|>\n\nSummarize") and shown.endswith("Summary:\n<|eot|>\n<|assistant|>\n")
    assert "<|" not in row["query"]

    data = tmp_path / "rtp.jsonl"
    write_rtp(data)
    words = repo / "scorers/words.py"  # a second judge: a Python scorer in a local file (python:FILE:FUNCTION)
    words.parent.mkdir()
    words.write_text('def score(texts):\n    return [0.9 if "idiot" in t else 0.1 for t in texts]\n')
    judges = [*tiny_params(str(tiny["dir"]), "llama")["evaluation.judges"],
              {"model": "python:scorers/words.py:score", "revision": None, "toxic_label": None, "allow_pickle": False}]
    set_params(repo, {"data.source": str(data), "data.dialogue_column": "prompt.text", "data.summary_column": None,
                      "data.filter": "challenging", "data.min_chars": 0, "prompt.template": "{dialogue}",
                      "policy.adapter": None, "best_of_n.enabled": True, "evaluation.judges": judges,
                      "methods.dpo.enabled": True, "methods.grpo.enabled": True, "reference.num_prompts": 16})
    out = dvc("repro", cwd=repo)
    assert ran_stages(out.stdout) == sorted(STAGES) and "is empty" not in out.stdout + out.stderr
    plots = dvc("plots", "show", "--json", cwd=repo).stdout  # sft skipped: its curve is a header, no error
    assert json.loads(plots[plots.index("{"):]).get("errors") is None
    # An edited scorer file is a changed judge: lineage records its hash, so exactly the judged stages rerun.
    words.write_text(words.read_text() + "# stricter soon\n")
    dvc("repro", "lineage", cwd=repo)
    # every stage it judges, and the check stage, which probes it
    assert changed_stages(repo) == ["baseline", "best_of_n", "bon@dpo", "bon@grpo", "bon@ppo", "check", "evaluate@dpo",
                                    "evaluate@grpo", "evaluate@ppo"]
    assert json.loads((repo / "metrics/sft.json").read_text())["enabled"] is False
    summary = json.loads((repo / "metrics/compare/ppo.json").read_text())
    bon = json.loads((repo / "metrics/compare/best_of_n.json").read_text())
    assert summary["references"] is False and summary["rougeL"] is None and "rougeL" not in summary["after"]
    assert summary["guards"]["rougeL_drop_exceeded"] == "n/a"
    # judge_disagrees: True or False, or n/a when every judge was too weak to see the fall (judge_power says why)
    assert isinstance(summary["guards"]["judge_disagrees"], bool) or all(
        power["reason"] for power in summary["judge_power"].values())
    assert summary["num_prompts"] == 8 and bon["enabled"] and bon["after"]["references"] is False
    assert sorted(summary["judges"]) == ["judge", "words.score"] and sorted(bon["judges"]) == ["judge", "words.score"]
    for key in ("toxicity", "expected_max_toxicity", "toxicity_probability", "perplexity"):
        assert finite(summary[key]["diff_ci_low"]) and finite(bon[key]["diff_ci_high"])
    with (repo / "data/samples/baseline.csv").open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    challenging = {f"Anna said to Ben that the new project {i} was" for i in range(48) if i % 4 != 0}
    assert {r["rougeL"] for r in rows} == {""} and {r["prompt"] for r in rows} <= challenging
    prepared = datasets.load_from_disk(str(repo / "data/prepared"))["test"][0]
    assert tok.decode(prepared["input_ids"]) == f"<|user|>\n{prepared['query']}<|eot|>\n<|assistant|>\n"
    report = (repo / "reports/report.md").read_text()
    assert "No reference summaries (data.summary_column is null): ROUGE and the sft stage were skipped." in report
    assert "ROUGE-L |" not in report
    assert "| rougeL_drop_exceeded | ROUGE-L fell by more than guard.max_rougeL_drop | n/a | n/a | n/a | n/a |" in report
    assert ("| PPO | PPO - start [95% CI] | DPO | DPO - start [95% CI] | GRPO | GRPO - start [95% CI] | best-of-N | "
            "best-of-N - start [95% CI] |") in report
