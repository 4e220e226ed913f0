"""Model loading: the shared-base reference, reloading a detoxified policy, and refusing bad models."""
import dataclasses
import shutil

import pytest
import torch

from detoxkit.settings import (ComputeSettings, GenerationSettings, LoraSettings, PolicySettings, PPOSettings,
                               RewardSettings)
from detoxkit.errors import PipelineError
from detoxkit.models import attach_lora, load_detoxified, load_policy
from detoxkit.scoring import load_reward

CPU = ComputeSettings(device="cpu", dtype="float32", compile_generation=False)
LORA = LoraSettings(r=4, alpha=8, dropout=0.0, target_modules=["q", "v"])
GEN = GenerationSettings(min_length=5, top_k=0, top_p=1.0, do_sample=True, output_min_length=8, output_max_length=9,
                         batch_size=4)
PPO = PPOSettings(algorithm="ppo", learning_rate=1e-3, batch_size=4, mini_batch_size=2, epochs=1, max_steps=1, init_kl_coef=0.2,
                  adaptive_kl=True, target_kl=6.0, horizon=10000, max_kl=100, checkpoint_every=0, enabled=True,
                  lora=None)


def policy(ref, **kw):
    return PolicySettings(**{"model": str(ref), "revision": None, "adapter": None, "allow_pickle": False, **kw})


def reward(ref, **kw):
    return RewardSettings(**{"model": str(ref), "revision": None, "not_hate_label": "nothate", "hate_label": "hate",
                             "include_prompt": True, "batch_size": 4, "allow_pickle": False, **kw})


@pytest.fixture(scope="module")
def lab2_adapter(tiny, tmp_path_factory):
    """A Lab-2 style LoRA adapter with non-zero weights (so it really changes the policy)."""
    from peft import LoraConfig, TaskType, get_peft_model
    from transformers import AutoModelForSeq2SeqLM

    torch.manual_seed(0)
    base = AutoModelForSeq2SeqLM.from_pretrained(tiny["dir"] / "policy")
    cfg = LoraConfig(r=4, lora_alpha=8, target_modules=["q", "v"], task_type=TaskType.SEQ_2_SEQ_LM,
                     init_lora_weights=False)
    out = tmp_path_factory.mktemp("lab2") / "adapter"
    get_peft_model(base, cfg).save_pretrained(out)
    return out


def logits(model, tok):
    enc = tok(["Summarize: #Person1#: hi there", "Summary: meet"], return_tensors="pt", padding=True)
    dec = torch.tensor([[0, 5, 6, 7], [0, 8, 9, 10]])
    with torch.no_grad():
        return model(**enc, decoder_input_ids=dec).logits


def test_reference_is_exactly_the_starting_policy_not_the_bare_base(tiny, lab2_adapter):
    from peft import PeftModel
    from transformers import AutoModelForSeq2SeqLM

    model, tok, _ = load_policy(policy(tiny["dir"] / "policy"), CPU, lab2_adapter)  # base + Lab-2, merged
    ppo = attach_lora(model, LORA)
    with torch.no_grad():  # make the PPO adapter non-trivial, as after training
        for name, p in ppo.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    bare = AutoModelForSeq2SeqLM.from_pretrained(tiny["dir"] / "policy").eval()
    start = PeftModel.from_pretrained(AutoModelForSeq2SeqLM.from_pretrained(tiny["dir"] / "policy"),
                                      lab2_adapter).eval()
    with ppo.disable_adapter():
        ref = logits(ppo, tok)
    assert torch.allclose(ref, logits(start, tok), atol=1e-5)
    assert not torch.allclose(ref, logits(bare, tok), atol=1e-3)  # the Lab-2 adapter matters
    assert not torch.allclose(logits(ppo, tok), ref, atol=1e-3)  # and the PPO adapter is active


def test_detoxified_policy_saves_and_loads_back_in_one_call(tiny, lab2_adapter, tmp_path):
    from detoxkit.ppo_engine import PPOEngine

    model, tok, _ = load_policy(policy(tiny["dir"] / "policy"), CPU, lab2_adapter)
    ppo = attach_lora(model, LORA)
    with torch.no_grad():
        for name, p in ppo.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    PPOEngine(ppo, tok, PPO, GEN, seed=0, cpu=True).save(tmp_path, policy(tiny["dir"] / "policy"), lab2_adapter)
    assert (tmp_path / "value_head.safetensors").is_file()
    loaded, tok2, _ = load_detoxified(tmp_path, CPU)
    assert torch.allclose(logits(loaded, tok2), logits(ppo.eval(), tok), atol=1e-5)
    with loaded.disable_adapter(), ppo.disable_adapter():
        assert torch.allclose(logits(loaded, tok2), logits(ppo, tok), atol=1e-5)
    out = loaded.generate(**tok2(["Summarize: hi"], return_tensors="pt"), max_new_tokens=5, do_sample=False)
    assert out.shape[0] == 1


def test_policy_must_be_a_language_model_told_from_its_config(tiny, tmp_path):
    from transformers import BertConfig

    from detoxkit.models import check_policy_config, policy_kind

    with pytest.raises(PipelineError, match=r"reward is a RobertaForSequenceClassification \(a classifier\), "
                                            "not a language model"):
        load_policy(policy(tiny["dir"] / "reward"), CPU, None)
    BertConfig(hidden_size=8, num_hidden_layers=1, num_attention_heads=2, intermediate_size=8).save_pretrained(
        tmp_path / "bert")  # no architectures: told apart by its type
    with pytest.raises(PipelineError, match="is an encoder-only 'bert' model, not a language model"):
        check_policy_config(policy(tmp_path / "bert"))
    kinds = {name: policy_kind(check_policy_config(policy(tiny["dir"] / name))) for name in ("policy", "gpt2", "llama")}
    assert kinds == {"policy": "seq2seq", "gpt2": "causal", "llama": "causal"}


def test_reward_must_be_a_sequence_classifier(tiny):
    with pytest.raises(PipelineError, match="T5ForConditionalGeneration, not a sequence classifier"):
        load_reward(reward(tiny["dir"] / "policy"), CPU)


def test_reward_without_the_labels_is_refused_with_its_labels(tiny, tmp_path):
    from make_tiny import build_reward

    build_reward(tmp_path / "r", ["some text here", "more words"], labels=("LABEL_0", "LABEL_1"))
    with pytest.raises(PipelineError, match=r"no label 'nothate'; its labels are \['LABEL_0', 'LABEL_1'\]"):
        load_reward(reward(tmp_path / "r"), CPU)


def test_missing_paths_and_unreachable_hub_are_explained(tmp_path):
    with pytest.raises(PipelineError, match="does not exist"):
        load_policy(policy(tmp_path / "nope"), CPU, None)
    (tmp_path / "empty").mkdir()
    with pytest.raises(PipelineError, match="has no config.json"):
        load_policy(policy(tmp_path / "empty"), CPU, None)
    with pytest.raises(PipelineError) as err:
        load_policy(policy("no-such-org/no-such-model"), CPU, None)
    text = str(err.value)
    assert "'no-such-org/no-such-model'" in text and "HF_HUB_OFFLINE=1" in text and "make_tiny.py" in text
    assert "Traceback" not in text


def test_pickle_weights_are_refused_unless_allowed(tiny, tmp_path):
    from transformers import AutoModelForSeq2SeqLM

    pickled = tmp_path / "pickled"
    shutil.copytree(tiny["dir"] / "policy", pickled)
    (pickled / "model.safetensors").unlink()
    AutoModelForSeq2SeqLM.from_pretrained(tiny["dir"] / "policy").save_pretrained(pickled, safe_serialization=False)
    assert (pickled / "pytorch_model.bin").exists()
    with pytest.raises(PipelineError, match="allow_pickle: true"):
        load_policy(policy(pickled), CPU, None)
    model, _, _ = load_policy(policy(pickled, allow_pickle=True), CPU, None)
    assert model.config.model_type == "t5"


def test_adapter_for_another_base_is_refused(tiny, tmp_path):
    from peft import LoraConfig, TaskType, get_peft_model
    from transformers import T5Config, T5ForConditionalGeneration

    other = T5ForConditionalGeneration(T5Config(vocab_size=50, d_model=16, d_kv=4, d_ff=32, num_layers=1,
                                                num_heads=4, decoder_start_token_id=0))
    get_peft_model(other, LoraConfig(r=2, target_modules=["q", "v"], task_type=TaskType.SEQ_2_SEQ_LM,
                                     init_lora_weights=False)).save_pretrained(tmp_path / "a")
    with pytest.raises(PipelineError, match="does not match the base model"):
        load_policy(policy(tiny["dir"] / "policy"), CPU, tmp_path / "a")
    with pytest.raises(PipelineError, match="has no adapter_config.json"):
        from detoxkit.models import start_adapter_path
        start_adapter_path(policy(tiny["dir"] / "policy", adapter=str(tmp_path)), tmp_path)


def test_ppo_rollouts_work_when_the_decoder_starts_with_eos(tiny, tmp_path):
    """BART's decoder start token is EOS; TRL 0.11.4's own generate() would cut every response to it."""
    from transformers import AutoTokenizer, BartConfig, BartForConditionalGeneration

    from detoxkit.ppo_engine import PPOEngine

    tok = AutoTokenizer.from_pretrained(tiny["dir"] / "reward")  # byte-level BPE, <s>=0 <pad>=1 </s>=2
    torch.manual_seed(0)
    BartForConditionalGeneration(BartConfig(
        vocab_size=len(tok), d_model=16, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2,
        decoder_attention_heads=2, encoder_ffn_dim=32, decoder_ffn_dim=32, max_position_embeddings=256,
    )).save_pretrained(tmp_path / "bart")
    tok.save_pretrained(tmp_path / "bart")
    model, tok, _ = load_policy(policy(tmp_path / "bart"), CPU, None)
    assert model.config.decoder_start_token_id == tok.eos_token_id
    engine = PPOEngine(attach_lora(model, LoraSettings(r=2, alpha=4, dropout=0.0, target_modules="auto")),
                       tok, PPO, GEN, seed=0, cpu=True)
    queries = [torch.tensor(tok(f"dialogue number {i} about plans")["input_ids"]) for i in range(4)]
    responses = engine.generate(queries, 8)
    assert all(r[0] == tok.eos_token_id and len(r) >= 6 for r in responses)
    stats = engine.step(queries, responses, [0.1, -0.2, 0.3, 0.0])
    assert all(map(lambda v: v == v, stats.values())) and "objective/kl" in stats


def test_static_cache_generation_matches_eager(tiny):
    """compute.compile_generation's path (padded prompts, full batches, a cache sized for the longest
    response) gives the eager path's greedy tokens; on a CPU only the compilation itself is skipped."""
    from detoxkit.generation import generate, static_shape

    model, tok, _ = load_policy(policy(tiny["dir"] / "policy"), CPU, None)
    queries = tok([f"Summarize: #Person1#: we meet at {i} o'clock " * (i + 1) for i in range(5)])["input_ids"]
    assert static_shape(True, model, queries, 12) is None  # CUDA only
    shape = (max(map(len, queries)) + 3, 12)  # longer prompts and cache than this batch needs
    eager = generate(model, tok, queries, 4, "cpu", max_new_tokens=7, min_length=3, do_sample=False)
    static = generate(model, tok, queries, 4, "cpu", static=shape, max_new_tokens=7, min_length=3, do_sample=False)
    assert static == eager and len(static) == 5  # the rows that fill the last batch are dropped
    assert max(map(len, static)) <= 7
    with pytest.raises(ValueError, match="exceeds the static cache"):
        generate(model, tok, queries, 4, "cpu", static=shape, max_new_tokens=13, do_sample=False)


def test_damaged_policy_outputs_are_named_with_the_fix(lab2_adapter, tmp_path):
    """A truncated adapter or an invalid policy.json names the file and says `dvc checkout`, before any load."""
    from detoxkit.models import start_adapter_path

    folder = tmp_path / "sft"
    shutil.copytree(lab2_adapter, folder)
    weights = folder / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(PipelineError, match=rf"{weights} is damaged .* `dvc checkout {folder}`"):
        start_adapter_path(policy("/nonexistent/base", adapter="sft"), folder)

    detoxified = tmp_path / "detoxified"
    detoxified.mkdir()
    (detoxified / "policy.json").write_text('{"base_model": ')
    with pytest.raises(PipelineError, match=rf"{detoxified / 'policy.json'} is damaged .* `dvc checkout"):
        load_detoxified(detoxified, CPU)


def test_reward_whose_weights_do_not_fit_its_config_is_named(tiny, tmp_path):
    import json

    bad = tmp_path / "reward"
    shutil.copytree(tiny["dir"] / "reward", bad)
    config = json.loads((bad / "config.json").read_text())
    config["intermediate_size"] *= 2  # the saved feed-forward weights no longer fit
    (bad / "config.json").write_text(json.dumps(config))
    with pytest.raises(PipelineError, match=rf"reward.model {bad}: its weights do not match its config.json "
                                            r"\(.*size mismatch"):
        load_reward(reward(bad), CPU)


def test_policy_tokenizer_without_pad_token_pads_with_eos(tiny, tmp_path, caplog):
    import logging

    from transformers import AutoTokenizer

    from detoxkit.models import load_tokenizer

    folder = tmp_path / "policy"
    shutil.copytree(tiny["dir"] / "policy", folder)
    tok = AutoTokenizer.from_pretrained(folder)
    tok.pad_token = None
    tok.save_pretrained(folder)
    assert AutoTokenizer.from_pretrained(folder).pad_token is None
    with caplog.at_level(logging.INFO, logger="detox.models"):
        loaded = load_tokenizer("policy.model", str(folder), None)
    assert loaded.pad_token == loaded.eos_token and loaded.pad_token is not None
    assert "the tokenizer has no pad token; padding with" in caplog.text


def test_k_samples_per_prompt_and_k_1_draws_what_one_pass_does(tiny):
    """evaluation.samples_per_prompt: k = 1 gives exactly one pass over the prompts (today's numbers); k = 3
    samples each prompt three times in a row, and the per-prompt metrics follow from those samples."""
    import datasets

    from detoxkit.settings import EvaluationSettings
    from detoxkit.evaluation import Sampler, evaluate_policy
    from detoxkit.summary import summarize
    from detoxkit.scoring import build_scorer

    model, tok, _ = load_policy(policy(tiny["dir"] / "policy"), CPU, None)
    scorer = build_scorer(reward(tiny["dir"] / "reward"), CPU)
    texts = [f"Summarize: #Person1#: we meet at {i} o'clock. #Person2#: fine." for i in range(5)]
    rows = datasets.Dataset.from_dict({"query": texts, "input_ids": tok(texts)["input_ids"], "summary": ["ok"] * 5})
    gen = {"do_sample": True, "top_k": 0, "min_length": 3}
    ev = EvaluationSettings(num_samples=5, samples_per_prompt=1, toxic_threshold=0.5, max_new_tokens=6, batch_size=2,
                            judges=[])
    sampler = Sampler(model, tok, "cpu", 7, ev.batch_size, kwargs=gen)
    one = evaluate_policy(sampler, scorer, rows, ev)
    _, plain = sampler.texts(rows, 6, "plain")
    assert [r["response"] for r in one] == plain  # the same draws as a single pass (before k existed)
    assert [r["toxicity"] for r in one] == pytest.approx(list(scorer.score(texts, plain)[1]), abs=1e-6)

    three = evaluate_policy(sampler, scorer, rows, dataclasses.replace(ev, samples_per_prompt=3))
    assert [(r["index"], r["sample"]) for r in three] == [(i, s) for i in range(5) for s in range(3)]
    assert len({r["response"] for r in three}) > 5  # sampled, not copied
    worst = [max(r["toxicity"] for r in three if r["index"] == i) for i in range(5)]
    metrics = summarize(three, 0.5)
    assert (metrics["num_prompts"], metrics["samples_per_prompt"], metrics["num_samples"]) == (5, 3, 15)
    assert metrics["expected_max_toxicity"] == pytest.approx(sum(worst) / 5)
    assert metrics["toxicity_probability"] == pytest.approx(sum(w >= 0.5 for w in worst) / 5)
    assert summarize(three, 0.999)["toxicity_probability"] <= metrics["toxicity_probability"]
