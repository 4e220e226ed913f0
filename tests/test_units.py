"""Unit tests of the shared helpers: settings, data, labels, scoring, statistics, atomic output."""
import json
import os
import shutil

import numpy as np
import pytest
import yaml
from conftest import ROOT

from detoxkit.config import load_params
from detoxkit.errors import ParamsError, PipelineError
from detoxkit.data import in_window, load_source, make_prompt, prepare, take
from detoxkit.io import atomic_dir, write_json
from detoxkit.scoring import label_ids
from detoxkit.stats import guards, improvement_pct, interval_verdict, paired_bootstrap


def write_params(tmp_path, edit):
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    edit(params)
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    return path


# --- params ----------------------------------------------------------------------------------
def test_shipped_params_are_valid_and_reproduce_the_lab():
    p = load_params(ROOT / "params.yaml")
    ppo = p.methods["ppo"]
    assert (ppo.lora.r, ppo.lora.alpha, ppo.lora.dropout, ppo.lora.target_modules) == (32, 32, 0.05, "auto")  # T5: q, v
    assert (ppo.learning_rate, ppo.batch_size, ppo.mini_batch_size, ppo.epochs, ppo.max_steps) == (1.41e-5, 16, 4, 1, 10)
    assert list(p.methods) == ["ppo", "dpo", "grpo"] and ppo.algorithm == "ppo"
    assert (p.generation.min_length, p.generation.top_k, p.generation.top_p, p.generation.do_sample) == (5, 0, 1.0, True)
    assert (p.generation.output_min_length, p.generation.output_max_length) == (100, 400)
    assert (p.data.min_chars, p.data.max_chars, p.data.test_size) == (200, 1000, 0.2)
    assert p.reward.not_hate_label == "nothate" and p.reward.hate_label == "hate"
    assert "Summarize the following conversation." in p.prompt.template


@pytest.mark.parametrize("edit, message", [
    (lambda p: p["methods"]["ppo"].pop("learning_rate"), "missing key methods.ppo.learning_rate"),
    (lambda p: p["methods"]["ppo"].update(lerning_rate=1), "unknown key methods.ppo.lerning_rate"),
    (lambda p: p["methods"]["ppo"].update(batch_size="16"), "methods.ppo.batch_size is '16'; expected an integer"),
    (lambda p: p["methods"]["ppo"].update(mini_batch_size=3),
     "methods.ppo.mini_batch_size (3) must divide methods.ppo.batch_size (16)"),
    (lambda p: p["data"].update(test_size=1.5), "data.test_size must be between 0 and 1"),
    (lambda p: p["evaluation"].update(num_samples="some"), "evaluation.num_samples is 'some'"),
    (lambda p: p["compute"].update(dtype="fp8"), "compute.dtype is 'fp8'; expected one of"),
    (lambda p: p["prompt"].update(template="no placeholder"), "prompt.template must contain the placeholder"),
    (lambda p: p.update(ppo_typo={}), "unknown section 'ppo_typo'"),
    (lambda p: p["methods"]["ppo"]["lora"].update(target_modules="q"),
     "methods.ppo.lora.target_modules is 'q'; expected 'auto' or a list"),
    (lambda p: p.update(lora=p["methods"]["ppo"].pop("lora")), "section 'lora' is now methods.ppo.lora (the methods are"),
    (lambda p: p.update(ppo=p.pop("methods")["ppo"]), "section 'ppo' is now methods.ppo (the methods are named entries"),
    (lambda p: [p["methods"][m].update(enabled=False) for m in ("ppo", "dpo", "grpo")],
     "every method is off (methods.ppo.enabled, methods.dpo.enabled, methods.grpo.enabled are false)"),
    (lambda p: (p["methods"]["ppo"].update(enabled=False), p["publish"].update(method="ppo")),
     "publish.method is ppo, but methods.ppo.enabled is false (nothing to publish); set methods.ppo.enabled: true, or "
     "publish.method: dpo, grpo or best"),
    (lambda p: p["publish"].update(method="best_of_n"),
     "publish.method is 'best_of_n'; expected one of ppo, dpo, grpo or best"),
    # a methods entry: a name that is a file name, an algorithm the code knows, the rules of that algorithm
    (lambda p: p["methods"].update({"GRPO fast": p["methods"]["grpo"]}), "methods.GRPO fast is not a method name"),
    (lambda p: p["methods"].update(best_of_n=p["methods"]["grpo"]), "methods.best_of_n is not a method name"),
    (lambda p: p["methods"]["grpo"].update(algorithm="ppo2"),
     "methods.grpo.algorithm is 'ppo2'; expected one of ['ppo', 'dpo', 'grpo']"),
    (lambda p: p["methods"].update(g2={**p["methods"]["grpo"], "lora": {**p["methods"]["grpo"]["lora"], "dropout": 0.1}}),
     "methods.g2.lora.dropout is 0.1; must be 0"),
    (lambda p: p["methods"].update(d2={**p["methods"]["dpo"], "max_prompt_length": 100}),
     "data.max_prompt_tokens (512) is above methods.d2.max_prompt_length (100)"),
    (lambda p: p.update(methods={}), "methods must be a mapping of named method entries"),
    (lambda p: p["best_of_n"].update(on_trained=["dpo", "ddpo"]),
     "best_of_n.on_trained names 'ddpo', which is no methods entry; name some of ppo, dpo or grpo, or write true"),
    (lambda p: p["best_of_n"].update(on_trained=["dpo", "dpo"]),
     "best_of_n.on_trained names dpo twice; list each entry once"),
    (lambda p: p["best_of_n"].update(on_trained="dpo"), "best_of_n.on_trained is 'dpo'; expected true or false or a list"),
    (lambda p: p["best_of_n"].update(on_trained="yes"), "best_of_n.on_trained is 'yes', which YAML 1.2"),
    (lambda p: p["best_of_n"].update(on_trained=["dpo", 1]), "best_of_n.on_trained[1] is 1; expected a string"),
    (lambda p: p["methods"]["dpo"].update(loss="bonbon", rounds=2), "methods.dpo.loss is bonbon with rounds 2"),
    (lambda p: p["methods"]["grpo"].update(reward_transform="vbon"),  # the lab's rollouts: 100 to 400 tokens
     "reference.max_new_tokens (32) is outside the rollouts' lengths [generation.output_min_length, "
     "output_max_length) = [100, 400)"),
    (lambda p: (p["reference"].update(num_prompts=0)),
     "methods.dpo is a DPO method, which trains on pairs from the reference samples, but reference.num_prompts is 0"),
    # no NaN/inf, ranges on every limit, no format-string tricks
    (lambda p: p["guard"].update(max_kl=float("nan")), "guard.max_kl is nan; expected a finite number"),
    (lambda p: p["guard"].update(max_rougeL_drop=-0.1), "guard.max_rougeL_drop must be in [0, 1]"),
    (lambda p: p["guard"].update(min_mean_length=-1), "guard.min_mean_length must be >= 0"),
    (lambda p: p["methods"]["ppo"].update(learning_rate=float("inf")), "methods.ppo.learning_rate is inf; expected a finite number"),
    (lambda p: p.update(seed=-1), "seed is -1; must be in [0, 2**32)"),
    (lambda p: p.update(seed=2**32), "seed is 4294967296; must be in [0, 2**32)"),
    (lambda p: p["report"].update(bootstrap_resamples=2_000_000_000), "report.bootstrap_resamples must be between"),
    (lambda p: p["report"].update(bootstrap_seed=-5), "report.bootstrap_seed must be in [0, 2**32)"),
    (lambda p: p["report"].update(min_pairs=1), "report.min_pairs must be >= 2"),
    (lambda p: p["prompt"].update(template="{dialogue.__class__} {dialogue}"),
     "prompt.template has the field {dialogue.__class__}"),
    (lambda p: p["prompt"].update(template="{dialogue} {0}"), "prompt.template has the field {0}"),
    (lambda p: p["prompt"].update(template="{dialogue} {dialogue!r}"), "prompt.template has the field {dialogue!r}"),
    (lambda p: p["policy"].update(model=" "), "policy.model must name a Hub id or a local folder"),
])
def test_bad_params_name_the_key(tmp_path, edit, message):
    path = write_params(tmp_path, edit)
    with pytest.raises(ParamsError) as err:
        load_params(path)
    assert message in str(err.value)


def test_best_of_n_on_trained_is_every_entry_or_the_listed_ones(tmp_path):
    from detoxkit.methods import methods_of
    names = lambda edit: [(m.name, m.enabled) for m in methods_of(load_params(write_params(tmp_path, edit)))]
    base = [("ppo", True), ("dpo", True), ("grpo", True), ("best_of_n", True)]
    assert names(lambda p: None) == base
    assert names(lambda p: p["best_of_n"].update(on_trained=True)) == [*base, ("ppo+bon", True), ("dpo+bon", True),
                                                                      ("grpo+bon", True)]
    assert names(lambda p: p["best_of_n"].update(on_trained=["dpo"])) == [*base, ("dpo+bon", True)]
    assert names(lambda p: p["best_of_n"].update(on_trained=[])) == base
    assert names(lambda p: p["best_of_n"].update(on_trained=["dpo"], enabled=False)) == \
        [*base[:3], ("best_of_n", False), ("dpo+bon", False)]  # best-of-N off: its stages write placeholders
    assert names(lambda p: (p["best_of_n"].update(on_trained=["dpo"]), p["methods"]["dpo"].update(enabled=False)))[-1] \
        == ("dpo+bon", False)  # an entry that is off gives best-of-N nothing to sample from


def test_num_samples_all_is_accepted(tmp_path):
    path = write_params(tmp_path, lambda p: p["evaluation"].update(num_samples="all"))
    assert load_params(path).evaluation.num_samples == "all"


# --- data ------------------------------------------------------------------------------------
def test_length_window_is_the_labs():
    assert not in_window("x" * 200, 200, 1000) and in_window("x" * 201, 200, 1000)
    assert in_window("x" * 1000, 200, 1000) and not in_window("x" * 1001, 200, 1000)
    assert not in_window(None, 0, 10)


def test_prompt_wraps_the_dialogue():
    assert make_prompt("Summarize:\n{dialogue}\nSummary:", "A: hi") == "Summarize:\nA: hi\nSummary:"


def _data_settings(tmp_path, **kw):
    path = write_params(tmp_path, lambda p: p["data"].update(kw))
    return load_params(path)


def test_prepare_filters_prompts_and_splits_deterministically(tmp_path, tiny):
    from transformers import AutoTokenizer

    import datasets
    p = _data_settings(tmp_path, min_chars=10, max_chars=50)
    rows = {"dialogue": ["short", "x" * 30, "y" * 40, "z" * 60, "w" * 20, "v" * 25],
            "summary": ["s"] * 6}
    tok = AutoTokenizer.from_pretrained(tiny["dir"] / "policy")
    split = prepare(datasets.Dataset.from_dict(rows), p.data, p.prompt, tok, seed=1)
    assert len(split["train"]) + len(split["test"]) == 4
    assert split["test"][0]["query"] == make_prompt(p.prompt.template, split["test"][0]["dialogue"])
    assert split["test"][0]["input_ids"] == tok(split["test"][0]["query"])["input_ids"]
    again = prepare(datasets.Dataset.from_dict(rows), p.data, p.prompt, tok, seed=1)
    assert again["test"]["dialogue"] == split["test"]["dialogue"]


RTP = [{"filename": f"f{i}", "challenging": i % 3 != 0,  # RealToxicityPrompts' shape: nested prompt, no reference
        "prompt": {"text": f"Prompt number {i} says that the people", "toxicity": 0.1 * (i % 10)},
        "continuation": {"text": "are here.", "toxicity": 0.0}} for i in range(12)]


def test_prompt_only_dataset_with_dotted_columns_and_a_filter(tmp_path, tiny):
    from transformers import AutoTokenizer

    import datasets
    def prompt_only(**kw):
        return load_params(write_params(tmp_path, lambda q: (q["data"].update(summary_column=None, min_chars=0, **kw),
                                                             q["policy"].update(adapter=None))))

    p = prompt_only(dialogue_column="prompt.text", filter="challenging")
    tok = AutoTokenizer.from_pretrained(tiny["dir"] / "policy")
    split = prepare(datasets.Dataset.from_list(RTP), p.data, p.prompt, tok, seed=0)
    kept = [r["prompt"]["text"] for r in RTP if r["challenging"]]
    assert sorted(list(split["train"]["dialogue"]) + list(split["test"]["dialogue"])) == sorted(kept)  # 8 of 12
    assert "summary" not in split["test"].column_names  # no references: the evaluation then skips ROUGE
    row = split["test"][0]
    assert row["query"] == make_prompt(p.prompt.template, row["dialogue"])

    bad = [{**r, "challenging": "yes"} for r in RTP]
    with pytest.raises(PipelineError, match="row 1 holds 'yes' there, not true/false"):
        prepare(datasets.Dataset.from_list(bad), p.data, p.prompt, tok, seed=0)
    p = prompt_only(dialogue_column="prompt.txt")
    with pytest.raises(PipelineError, match=r"no column 'prompt.txt' \(.*prompt.text, prompt.toxicity.*set "
                                            r"data.dialogue_column"):
        prepare(datasets.Dataset.from_list(RTP), p.data, p.prompt, tok, seed=0)
    path = write_params(tmp_path, lambda q: (q["data"].update(summary_column=None), q["policy"].update(adapter="sft")))
    with pytest.raises(ParamsError, match="policy.adapter is sft, but data.summary_column is null"):
        load_params(path)


def test_data_errors_are_explained(tmp_path, tiny):
    import datasets
    p = _data_settings(tmp_path, min_chars=500, max_chars=600)
    ds = datasets.Dataset.from_dict({"dialogue": ["a" * 10, "b" * 20], "summary": ["s", "t"]})
    with pytest.raises(PipelineError, match=r"read 2, kept 0 with 500 < characters <= 600"):
        prepare(ds, p.data, p.prompt, None, seed=0)
    ds = datasets.Dataset.from_dict({"text": ["a"], "summary": ["s"]})
    with pytest.raises(PipelineError, match=r"no column 'dialogue' \(columns found, nested fields dotted: text, "
                                            r"summary\); set data.dialogue_column"):
        prepare(ds, p.data, p.prompt, None, seed=0)
    with pytest.raises(PipelineError, match="asks for 5 samples but the test split has only 2"):
        take(datasets.Dataset.from_dict({"a": [1, 2]}), 5, "evaluation.num_samples")


def test_local_sources(tmp_path):
    p = _data_settings(tmp_path, source=str(tmp_path / "missing.jsonl"))
    with pytest.raises(PipelineError, match="does not exist"):
        load_source(p.data)
    bad = tmp_path / "latin1.jsonl"
    bad.write_bytes('{"dialogue": "caf\xe9", "summary": "s"}\n'.encode("latin-1"))
    with pytest.raises(PipelineError, match="is not UTF-8"):
        load_source(_data_settings(tmp_path, source=str(bad)).data)
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"dialogue": "unterminated\n')
    with pytest.raises(PipelineError, match=r"broken.jsonl line 1 is not valid JSON \(Invalid control character "
                                            r"at column 27\)"):
        load_source(_data_settings(tmp_path, source=str(broken)).data)
    good = tmp_path / "d.csv"
    good.write_text("dialogue,summary\nhello there,hi\n")
    assert load_source(_data_settings(tmp_path, source=str(good)).data)["dialogue"] == ["hello there"]


# --- labels and scoring ----------------------------------------------------------------------
class _Config:
    def __init__(self, label2id):
        self.label2id = label2id


def test_labels_are_found_by_name_not_position():
    assert label_ids(_Config({"hate": 0, "nothate": 1}), "nothate", "hate") == (1, 0)
    assert label_ids(_Config({"nothate": 0, "hate": 1}), "nothate", "hate") == (0, 1)
    with pytest.raises(PipelineError, match=r"no label 'nothate'; its labels are \['LABEL_0', 'LABEL_1'\]"):
        label_ids(_Config({"LABEL_0": 0, "LABEL_1": 1}), "nothate", "hate")


@pytest.fixture(scope="module")
def swapped_reward(tmp_path_factory):
    """A classifier whose label order is the reverse of the real one: index 0 is `hate`."""
    from make_tiny import build_reward, corpus, make_dialogues

    out = tmp_path_factory.mktemp("swapped") / "reward"
    build_reward(out, corpus(make_dialogues(16, 0)), labels=("hate", "nothate"))
    return out


def test_reward_is_the_not_hate_logit_and_toxicity_the_hate_probability(swapped_reward):
    import torch

    from detoxkit.settings import ComputeSettings, RewardSettings
    from detoxkit.scoring import build_scorer, join

    settings = RewardSettings(model=str(swapped_reward), revision=None, not_hate_label="nothate", hate_label="hate",
                              include_prompt=True, batch_size=2, allow_pickle=False)
    scorer = build_scorer(settings, ComputeSettings(device="cpu", dtype="float32", compile_generation=False))
    prompts, responses = ["Summary:\n", "Dialogue. Summary: ", "A"], ["they meet", "a cake", "b c"]
    rewards, toxicity = scorer.score(prompts, responses)
    enc = scorer.tokenizer([join(p, r) for p, r in zip(prompts, responses)], return_tensors="pt", padding=True)
    with torch.no_grad():
        logits = scorer.model(**enc).logits
    assert np.allclose(rewards, logits[:, 1].numpy(), atol=1e-5)  # nothate is index 1 here
    assert np.allclose(toxicity, logits.softmax(-1)[:, 0].numpy(), atol=1e-5)
    assert len(set(np.round(rewards, 4))) > 1  # the classifier really discriminates


def test_long_inputs_are_cut_prompt_first(swapped_reward):
    from transformers import AutoTokenizer

    from detoxkit.scoring import encode_for_classifier

    tok = AutoTokenizer.from_pretrained(swapped_reward)
    response = "they agree to meet tomorrow at noon"
    r_ids = tok(response, add_special_tokens=False)["input_ids"]
    ids = encode_for_classifier(tok, ["talk about the plans " * 200], [response], True, 64)[0]
    assert len(ids) == 64 and ids[-1 - len(r_ids):-1] == r_ids  # response kept whole, at the end
    ids = encode_for_classifier(tok, ["p"], ["word " * 500], True, 64)[0]
    assert len(ids) == 64


def test_scoring_never_crashes_on_long_inputs(swapped_reward):
    from detoxkit.settings import ComputeSettings, RewardSettings
    from detoxkit.scoring import build_scorer

    settings = RewardSettings(model=str(swapped_reward), revision=None, not_hate_label="nothate", hate_label="hate",
                              include_prompt=True, batch_size=4, allow_pickle=False)
    scorer = build_scorer(settings, ComputeSettings(device="cpu", dtype="float32", compile_generation=False))
    rewards, toxicity = scorer.score(["long dialogue " * 1000, "short"], ["reply " * 1000, "ok"])
    assert np.isfinite(rewards).all() and ((0 <= toxicity) & (toxicity <= 1)).all()


# --- statistics ------------------------------------------------------------------------------
def test_bootstrap_interval_surrounds_a_fixed_shift():
    rng = np.random.default_rng(0)
    before = rng.uniform(0.2, 0.8, 200)
    after = before - 0.1 + rng.normal(0, 0.01, 200)
    s = paired_bootstrap(before, after, 2000, 0, 0.95)
    assert s["diff_ci"][0] < -0.1 < s["diff_ci"][1] and s["diff_ci"][1] < 0
    assert s["diff"] == pytest.approx(after.mean() - before.mean())
    pct = improvement_pct(before.mean(), after.mean())
    assert s["improvement_pct_ci"][0] < pct < s["improvement_pct_ci"][1]
    assert "over 200 pairs excludes 0: a real decrease (better)" in interval_verdict("Toxicity", s["diff_ci"], True,
                                                                                      200, 20)
    assert s["n"] == 200 and not s["degenerate"]


def test_bootstrap_interval_contains_zero_without_a_change():
    rng = np.random.default_rng(1)
    before = rng.uniform(0, 1, 100)
    s = paired_bootstrap(before, before.copy(), 1000, 0, 0.95)
    assert s["diff_ci"] == [0.0, 0.0] and s["improvement_pct"] == 0
    noisy = paired_bootstrap(before, rng.permutation(before), 1000, 0, 0.95)
    assert noisy["diff_ci"][0] < 0 < noisy["diff_ci"][1]
    assert "contains 0" in interval_verdict("Toxicity", noisy["diff_ci"], True, 100, 20)
    assert s["degenerate"]  # every resampled difference is 0
    with pytest.raises(ValueError):
        paired_bootstrap([1, 2], [1], 100, 0, 0.95)


def test_lab_improvement_formula():
    assert improvement_pct(0.04, 0.03) == pytest.approx(25.0)
    assert improvement_pct(0.0, 0.1) is None


def test_guards_flag_exactly_the_crossed_limits():
    from detoxkit.settings import GuardSettings

    limits = GuardSettings(max_rougeL_drop=0.05, max_kl=2.0, min_mean_length=5, max_perplexity_ratio=1.5,
                           min_distinct2_ratio=0.8, min_judge_agreement=0.25)
    before = {"rougeL": 0.30, "kl_mean": 0.0, "length_mean": 20, "perplexity_mean": 10.0, "distinct_2": 0.9}
    ok = {"rougeL": 0.27, "kl_mean": 1.0, "length_mean": 18, "perplexity_mean": 14.9, "distinct_2": 0.73}
    hacked = {"rougeL": 0.10, "kl_mean": 3.0, "length_mean": 2, "perplexity_mean": 15.1, "distinct_2": 0.71}
    names = ["rougeL_drop_exceeded", "kl_exceeded", "length_below_min", "perplexity_rise_exceeded",
             "distinct2_below_min"]
    assert guards(before, ok, limits) == dict.fromkeys(names, False)
    assert guards(before, hacked, limits) == dict.fromkeys(names, True)
    no_refs = guards({k: v for k, v in before.items() if k != "rougeL"}, hacked, limits)
    assert no_refs == {**dict.fromkeys(names, True), "rougeL_drop_exceeded": "n/a"}  # cannot fire: not "held"
    from detoxkit.stats import crossed_guards

    assert crossed_guards(no_refs) == names[1:] and crossed_guards({"a": "n/a", "b": False}) == []


def test_distinct_n_counts_unique_word_ngrams_over_all_responses():
    from detoxkit.summary import distinct_n, summarize

    texts = ["they are kind", "they are kind", "they are nice people"]
    assert distinct_n(texts, 1) == 5 / 10  # they, are, kind, nice, people of 10 words
    assert distinct_n(texts, 2) == 4 / 7  # (they are) (are kind) (are nice) (nice people) of 7 bigrams
    assert distinct_n(texts, 3) == 3 / 4 and distinct_n(["one"], 2) == 0.0
    collapsed = [{"index": i, "response": "I am fine.", **dict.fromkeys(
        ["toxicity", "reward", "rouge1", "rouge2", "rougeL", "length", "kl", "perplexity"], 1.0)} for i in range(4)]
    assert summarize(collapsed, 0.5)["distinct_2"] == 2 / 8  # one safe phrase repeated: mode collapse
    assert summarize(collapsed, 0.5)["distinct_2_per_prompt"] == 1.0  # one sample a prompt: nothing repeats in it
    twice = [{**r, "index": i // 2} for i, r in enumerate(collapsed)]  # 2 prompts, k = 2 identical samples each
    assert summarize(twice, 0.5)["distinct_2_per_prompt"] == 2 / 4  # DExperts: among each prompt's k samples


# --- atomic output ---------------------------------------------------------------------------
def test_interrupted_json_write_keeps_the_previous_file(tmp_path):
    path = tmp_path / "m.json"
    write_json(path, {"a": 1})
    with pytest.raises(TypeError):
        write_json(path, {"a": object()})
    assert json.loads(path.read_text()) == {"a": 1}
    assert os.listdir(tmp_path) == ["m.json"]


def test_interrupted_folder_write_keeps_the_previous_folder(tmp_path):
    out = tmp_path / "model"
    with atomic_dir(out) as tmp:
        (tmp / "w").write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_dir(out) as tmp:
            (tmp / "w").write_text("half")
            raise RuntimeError("crash")
    assert (out / "w").read_text() == "old" and os.listdir(tmp_path) == ["model"]


# --- detox loop helpers ----------------------------------------------------------------------
def test_batches_cover_each_epoch_without_repeats_and_split_across_processes():
    from detoxkit.schedule import batch_indices, rollout_length

    seen = np.concatenate([batch_indices(40, 8, s, seed=3) for s in range(5)])
    assert sorted(seen) == list(range(40))
    assert (batch_indices(40, 8, 2, seed=3) == batch_indices(40, 8, 2, seed=3)).all()
    r0, r1 = batch_indices(40, 8, 0, 3, rank=0, world=2), batch_indices(40, 8, 0, 3, rank=1, world=2)
    assert not set(r0) & set(r1)

    class Gen:
        output_min_length, output_max_length = 100, 400
    lengths = {rollout_length(Gen, 0, s) for s in range(50)}
    assert min(lengths) >= 100 and max(lengths) < 400 and len(lengths) > 10


def test_each_process_draws_its_own_sampling_noise_and_rank_zero_is_unchanged():
    import torch

    from detoxkit.schedule import seed_step

    def draw(*args):
        seed_step(*args)
        return torch.rand(4), np.random.rand()

    assert torch.equal(draw(7, 3)[0], draw(7, 3, 0)[0])  # one process: the same stream as before ranks existed
    assert draw(7, 3, 0)[1] == draw(7, 3, 0)[1]  # and reproducible (resume relies on it)
    assert not torch.equal(draw(7, 3, 0)[0], draw(7, 3, 1)[0])
    assert draw(7, 3, 0)[1] != draw(7, 3, 1)[1]


def test_non_finite_values_stop_with_the_step_named(tmp_path):
    from detoxkit.checkpoint import check_finite

    fix = "Lower methods.ppo.learning_rate"
    check_finite({"reward": 1.0}, 3, tmp_path, 1, "PPO", fix)
    with pytest.raises(PipelineError, match="PPO step 7: reward is not finite.*No checkpoint had been written yet"):
        check_finite({"reward": float("nan")}, 7, tmp_path, 1, "PPO", fix)  # no state.pt: nothing is "kept"
    (tmp_path / "state.pt").write_bytes(b"x")
    with pytest.raises(PipelineError, match=f"The last good checkpoint is kept in {tmp_path}"):
        check_finite({"kl": float("inf")}, 7, tmp_path, 1, "PPO", fix)


def test_unreachable_hub_dataset_is_explained(tmp_path):
    p = _data_settings(tmp_path, source="no-such-org/no-such-dataset")
    with pytest.raises(PipelineError) as err:
        load_source(p.data)
    text = str(err.value)
    assert "could not load dataset 'no-such-org/no-such-dataset'" in text and "HF_HUB_OFFLINE=1" in text


def test_csv_round_trips_any_generated_text(tmp_path):
    from detoxkit.io import read_csv, write_csv

    rows = [{"response": 'carriage\rreturn, "quotes"\nnewline\x00nul', "reward": 1.5}, {"response": "plain", "reward": -2.0}]
    write_csv(tmp_path / "s.csv", rows, ["response", "reward"])
    back = read_csv(tmp_path / "s.csv")
    assert [r["response"] for r in back] == [r["response"] for r in rows]
    assert [float(r["reward"]) for r in back] == [1.5, -2.0]


# --- reliability round 2: no false verdicts, no unbounded settings --------------------------
def test_one_pair_or_a_degenerate_interval_is_never_a_verdict():
    one = paired_bootstrap([0.9], [0.1], 1000, 0, 0.95)  # one pair: every resample is the same pair
    assert one["diff_ci"][0] == one["diff_ci"][1] and one["degenerate"]
    text = interval_verdict("Toxicity", one["diff_ci"], True, 1, 20)
    assert "1 paired prompts are too few" in text and "no verdict" in text and "excludes" not in text
    same = paired_bootstrap([0.9] * 30, [0.1] * 30, 1000, 0, 0.95)  # enough pairs, but zero width
    text = interval_verdict("Toxicity", same["diff_ci"], True, 30, 20)
    assert "has no width" in text and "excludes" not in text


def test_bootstrap_in_chunks_gives_the_same_interval(monkeypatch):
    import detoxkit.stats as stats

    rng = np.random.default_rng(3)
    before, after = rng.uniform(0, 1, 50), rng.uniform(0, 1, 50)
    whole = paired_bootstrap(before, after, 5000, 0, 0.95)
    monkeypatch.setattr(stats, "CHUNK", 50 * 7)  # 7 resamples at a time, a ragged last chunk
    assert paired_bootstrap(before, after, 5000, 0, 0.95) == whole


def test_every_section_is_validated_and_max_kl_may_be_infinite(tmp_path):
    path = write_params(tmp_path, lambda p: p["methods"]["ppo"].update(max_kl=float("inf")))
    assert load_params(path).methods["ppo"].max_kl == float("inf")  # documented: never stop early
    path = write_params(tmp_path, lambda p: p["guard"].update(max_kl=-1))
    with pytest.raises(ParamsError, match="guard.max_kl must be positive"):
        load_params(path)  # the report's section fails every stage, not only report


def test_bad_jsonl_lines_and_non_text_summaries_are_named(tmp_path, tiny):
    from transformers import AutoTokenizer

    bad = tmp_path / "rows.jsonl"
    bad.write_text('{"dialogue": "a", "summary": "b"}\n\n{"dialogue": "c", "summary": \n')
    with pytest.raises(PipelineError, match=r"rows.jsonl line 3 is not valid JSON"):
        load_source(_data_settings(tmp_path, source=str(bad)).data)
    bad.write_bytes(b'{"dialogue": "a", "summary": "b"}\n{"dialogue": "\xff", "summary": "b"}\n')
    with pytest.raises(PipelineError, match=r"rows.jsonl line 2 is not UTF-8"):
        load_source(_data_settings(tmp_path, source=str(bad)).data)

    rows = [{"dialogue": f"#Person1#: dialogue number {i} " * 3, "summary": f"summary {i}"} for i in range(6)]
    rows[2]["summary"] = 42
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    p = _data_settings(tmp_path, source=str(data), min_chars=10, max_chars=1000, test_size=0.5)
    tok = AutoTokenizer.from_pretrained(tiny["dir"] / "policy")
    split = prepare(load_source(p.data), p.data, p.prompt, tok, 0)
    assert "42" in list(split["train"]["summary"]) + list(split["test"]["summary"])  # a number as text
    rows[4]["summary"] = None
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(PipelineError, match=r"row 5 has 'summary' = None, not text"):
        prepare(load_source(p.data), p.data, p.prompt, tok, 0)
    p = _data_settings(tmp_path, source=str(data), min_chars=10, max_chars=1000, test_size=0.99)
    rows[4]["summary"] = "s"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(PipelineError, match=r"data.test_size 0.99 leaves no train prompts of the 6 dialogues"):
        prepare(load_source(p.data), p.data, p.prompt, tok, 0)


def test_control_characters_never_reach_the_report():
    from detoxkit.render import md_table, qual_rows

    row = {"index": 3, "sample": 1, "prompt": "p\x00q", "response_before": "a\x1b[31mred\x07", "response_after": "b\x7f\x9b\r\nc",
           "reward_before": 0.0, "reward_after": 1.0, "reward_diff": 1.0}
    cells = qual_rows([row])[0]
    assert cells[:5] == [3, 1, "p q", "a [31mred", "b c"]  # the prompt's index and which of its k samples
    assert not any(ch in md_table(["x"] * 8, [cells]) for ch in "\x00\x1b\x07\x7f\x9b\r")


def test_lineage_names_hub_models_by_their_resolved_commit(tmp_path, monkeypatch):
    from huggingface_hub import constants

    from detoxkit.manifest import model_manifest

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    sha = "0123456789abcdef0123456789abcdef01234567"
    assert model_manifest("policy.model", "org/model", sha, {})["resolved"] == sha  # pinned: nothing to ask
    refs = tmp_path / "models--org--model/refs"
    refs.mkdir(parents=True)
    (refs / "main").write_text(sha)
    entry = model_manifest("policy.model", "org/model", "main", {})
    assert (entry["resolved"], entry["resolved_from"]) == (sha, "local cache")
    assert model_manifest("reward.model", "org/other", "main", {})["resolved"] == "unresolved:main"


def test_lineage_hashes_local_folders_by_content_and_caches_by_size_and_mtime(tmp_path):
    from detoxkit.manifest import model_manifest

    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    (folder / "model.safetensors").write_bytes(b"weights-1")
    for f in folder.iterdir():
        os.utime(f, ns=(1_700_000_000 * 10**9,) * 2)  # written long ago
    cache = {}
    first = model_manifest("reward.model", str(folder), None, cache)
    assert first["kind"] == "local" and first["files"] == 2 and len(cache) == 2
    assert model_manifest("reward.model", str(folder), None, cache) == first  # cached: same answer
    (folder / "model.safetensors").write_bytes(b"weights-2")  # same size, new mtime: hashed again
    second = model_manifest("reward.model", str(folder), None, cache)
    assert second["resolved"] != first["resolved"]
    # the file written just now is not cached (its mtime could repeat within the same tick)
    assert cache[str((folder / "model.safetensors").resolve())][1] == 1_700_000_000 * 10**9


def test_a_checkpoint_survives_a_new_max_steps_below_its_step_only(tmp_path):
    import torch
    from detoxkit.checkpoint import read_checkpoint, resumable_inputs
    from detoxkit.config import load_params

    params = load_params(ROOT / "params.yaml").raw
    for method, sections in (("ppo", ("policy", "reward", "generation")),
                             ("grpo", ("policy", "reward", "generation"))):
        entries = params["methods"]
        longer = {**params, "methods": {**entries, method: {**entries[method], "max_steps": 80, "checkpoint_every": 5}}}
        other_lr = {**params, "methods": {**entries, method: {**entries[method], "learning_rate": 1.0}}}
        same = resumable_inputs(params, sections, method)
        assert same == resumable_inputs(longer, sections, method)  # how many steps is no input of a step
        assert same != resumable_inputs(other_lr, sections, method)
    from detoxkit.io import fingerprint

    inputs = {"settings": "s", "reward model": "sha256:1"}
    state = {"step": 20, "history": [], "fingerprint": fingerprint(inputs, []), "inputs": inputs, "weights": {},
             "optimizer": {}, "kl_coef": 0.1}
    for max_steps, kept in ((50, True), (21, True), (20, False), (10, False)):
        folder = tmp_path / str(max_steps)
        folder.mkdir()
        torch.save(state, folder / "state.pt")
        assert (read_checkpoint(folder, lambda: inputs, max_steps, "methods.ppo.max_steps") is not None) is kept
        assert (folder / "state.pt").exists() is kept  # one that cannot resume is removed, as a foreign one is


def test_compute_threads_sets_torch_and_openmp_threads_in_every_stage(tmp_path):
    import subprocess
    import sys

    from conftest import ENV, set_params
    from detoxkit.config import load_params
    from detoxkit.errors import ParamsError

    shutil.copy(ROOT / "params.yaml", tmp_path / "params.yaml")
    set_params(tmp_path, {"compute.threads": 3})  # not what the test workers run with (OMP_NUM_THREADS)
    # applied by the entry point every stage runs through (not by loading the settings, which has no side effect)
    probe = ("import os, torch; from detoxkit.io import run_stage; "
             "run_stage(lambda: print(torch.get_num_threads(), os.environ['OMP_NUM_THREADS']))")
    proc = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, env=ENV, capture_output=True, text=True)
    assert proc.stdout.split() == ["3", "3"], proc.stderr
    late = ("from detoxkit.io import run_stage\n"  # a stage that loads torch in main(), after its placeholder check
            "def main():\n    import os, torch\n    print(torch.get_num_threads(), os.environ['OMP_NUM_THREADS'])\n"
            "run_stage(main)")
    proc = subprocess.run([sys.executable, "-c", late], cwd=tmp_path, env=ENV, capture_output=True, text=True)
    assert proc.stdout.split() == ["3", "3"], proc.stderr
    set_params(tmp_path, {"compute.threads": 0})
    with pytest.raises(ParamsError, match="compute.threads must be null or positive"):
        load_params(tmp_path / "params.yaml")


def test_the_default_judge_is_pinned_to_a_commit_and_its_licence_is_named():
    import re

    from detoxkit.config import load_params

    judge = load_params(ROOT / "params.yaml").evaluation.judges[0]
    assert judge.model == "s-nlp/roberta_toxicity_classifier" and re.fullmatch(r"[0-9a-f]{40}", judge.revision)
    for text in ((ROOT / "params.yaml").read_text(), (ROOT / "docs/parameters.md").read_text()):
        assert "cc-by-nc-sa" in text and "openrail++" in text


def test_the_benchmark_takes_each_ratio_per_interleaved_round_and_reports_its_median_and_range():
    from detoxkit.io import load_script

    bench = load_script(ROOT / "bench/bench_detox.py")

    def run(rate):
        return {"samples_per_s": rate, "peak_mib": 100.0}

    # round 2 ran beside other load: both of its phases slowed, its ratio barely moved
    rounds = {"lab_ppo": [run(1.0), run(0.1), run(1.0)], "ours_ppo": [run(20.0), run(2.5), run(22.0)]}
    ratios = bench.round_ratios(rounds)["ppo_speedup_b_over_a"]
    assert ratios["rounds"] == [20.0, 25.0, 22.0] and ratios["median"] == 22.0
    assert (ratios["min"], ratios["max"]) == (20.0, 25.0)
    summary = bench.summarize_rounds(rounds)
    assert summary["lab_ppo"]["samples_per_s"] == 1.0 and summary["lab_ppo"]["samples_per_s_rounds"] == [1.0, 0.1, 1.0]
    assert summary["ours_ppo"]["samples_per_s_median"] == 20.0 and summary["ours_ppo"]["rounds"] == 3


def test_the_report_stage_loads_neither_torch_nor_the_sampler():
    """report.py reads samples files (detoxkit.summary: numpy), not the evaluation's sampling code: its import takes
    no torch, so a report of a finished run starts in about a second."""
    import subprocess
    import sys

    probe = (f"import runpy, sys; runpy.run_path({str(ROOT / 'stages/report.py')!r}); "
             "print('heavy imports:', sorted(m for m in ('torch', 'transformers', 'detoxkit.evaluation') "
             "if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "heavy imports: []" in proc.stdout, proc.stdout


def test_detoxkit_imports_from_any_folder_and_nothing_edits_the_import_path():
    import subprocess
    import sys

    from conftest import ENV

    env = {k: v for k, v in ENV.items() if k != "PYTHONPATH"}
    proc = subprocess.run([sys.executable, "-c", "import detoxkit.models, detoxkit.scoring; print(detoxkit.__file__)"],
                          cwd="/", env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == str(ROOT / "stages/detoxkit/__init__.py")  # the editable install (pip install -e .)
    edits = ["sys.path" + op for op in (".insert", ".append", "[:0]", ".extend")]
    files = [ROOT / "README.md", *(ROOT / "docs").glob("*.md"), *(ROOT / "stages").rglob("*.py"), *(ROOT / "bench").glob("*.py"),
             *(ROOT / "tests").glob("*.py"), *(ROOT / "tools").glob("*.py")]
    found = [f"{f.relative_to(ROOT)}: {e}" for f in files for e in edits if e in f.read_text()]
    assert not found, found


def test_data_and_adapter_manifests_name_contents_and_hub_dataset_commits(tmp_path, monkeypatch):
    from huggingface_hub import constants

    from detoxkit.errors import PipelineError
    from detoxkit.manifest import adapter_manifest, data_manifest

    data = tmp_path / "rows.jsonl"
    data.write_text('{"dialogue": "a"}\n')
    os.utime(data, ns=(1_700_000_000 * 10**9,) * 2)
    cache = {}
    first = data_manifest(str(data), None, cache)
    assert first["kind"] == "local" and first["files"] == 1 and len(cache) == 1
    data.write_text('{"dialogue": "b"}\n')  # one row edited, same size
    assert data_manifest(str(data), None, cache)["resolved"] != first["resolved"]
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    sha = "89abcdef0123456789abcdef0123456789abcdef"
    (tmp_path / "datasets--org--data/refs").mkdir(parents=True)
    (tmp_path / "datasets--org--data/refs/main").write_text(sha)
    hub = data_manifest("org/data", None, {})  # revision null: the default branch, resolved to its commit
    assert (hub["kind"], hub["resolved"], hub["resolved_from"]) == ("hub", sha, "local cache")

    assert adapter_manifest("sft", {})["resolved"] == "sft" and adapter_manifest(None, {})["resolved"] == "none"
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    with pytest.raises(PipelineError, match=r"policy.adapter .*adapter is not a PEFT adapter folder"):
        adapter_manifest(str(adapter), {})
    (adapter / "adapter_config.json").write_text("{}")
    (adapter / "adapter_model.safetensors").write_bytes(b"1")
    (adapter / ".cache").mkdir()  # hidden folders (a Hub download's metadata) are not content
    (adapter / ".cache/x").write_text("changes often")
    one = adapter_manifest(str(adapter), {})
    (adapter / ".cache/x").write_text("changed")
    assert adapter_manifest(str(adapter), {}) == one and one["files"] == 2
    (adapter / "adapter_model.safetensors").write_bytes(b"2")  # retrained in place
    assert adapter_manifest(str(adapter), {})["resolved"] != one["resolved"]
