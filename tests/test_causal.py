"""Decoder-only (causal) policies: the response is only the continuation, prompts are cut inside the
dialogue, chat templates, stop tokens, SFT masking and LoRA targets per architecture."""
import shutil

import pytest
import torch

from detoxkit.settings import (ComputeSettings, GenerationSettings, LoraSettings, PolicySettings, PPOSettings,
                               PromptSettings, RewardSettings)
from detoxkit.errors import PipelineError
from detoxkit.models import attach_lora, check_lora_targets, load_config, load_policy, load_tokenizer

CPU = ComputeSettings(device="cpu", dtype="float32", compile_generation=False)
TEMPLATE = "\nSummarize the following conversation.\n\n{dialogue}\n\nSummary:\n"


def policy(ref, **kw):
    return PolicySettings(**{"model": str(ref), "revision": None, "adapter": None, "allow_pickle": False, **kw})


@pytest.fixture(scope="module")
def sharp(tiny, tmp_path_factory):
    """The tiny causal policies with peaked output distributions, so greedy decoding has no near-ties."""
    from transformers import AutoModelForCausalLM

    out = {}
    for name in ("gpt2", "llama"):
        folder = tmp_path_factory.mktemp("sharp") / name
        shutil.copytree(tiny["dir"] / name, folder)
        model = AutoModelForCausalLM.from_pretrained(folder)
        with torch.no_grad():
            model.get_output_embeddings().weight.mul_(30)
        model.save_pretrained(folder)
        out[name] = folder
    return out


@pytest.mark.parametrize("name, chat", [("gpt2", False), ("llama", True)])
def test_no_prompt_token_reaches_the_response_the_score_or_the_ppo_tensors(tiny, sharp, name, chat):
    from detoxkit.data import PromptEncoder
    from detoxkit.evaluation import reference_stats
    from detoxkit.generation import response_logprobs
    from detoxkit.ppo_engine import PPOEngine
    from detoxkit.scoring import build_scorer, encode_for_classifier, join

    model, tok, _ = load_policy(policy(sharp[name]), CPU, None)
    encoder = PromptEncoder(tok, PromptSettings(template=TEMPLATE, chat_template=chat), 512)
    dialogues = ["#Person1#: Hi Anna, do you want to cook dinner tonight?", "#Person2#: Thanks! " * 9]
    texts, ids, _ = zip(*map(encoder, dialogues))
    assert len(ids[0]) != len(ids[1])  # the shorter prompt is left-padded in the batch
    gen = GenerationSettings(min_length=3, top_k=0, top_p=1.0, do_sample=False, output_min_length=6,
                             output_max_length=7, batch_size=2)
    ppo = PPOSettings(algorithm="ppo", learning_rate=1e-3, batch_size=2, mini_batch_size=1, epochs=1, max_steps=1, init_kl_coef=0.2,
                      adaptive_kl=True, target_kl=6.0, horizon=10000, max_kl=100, checkpoint_every=0, enabled=True,
                      lora=None)
    engine = PPOEngine(attach_lora(model, LoraSettings(r=2, alpha=4, dropout=0.0, target_modules="auto")), tok, ppo,
                       gen, seed=0, cpu=True)
    queries = [torch.tensor(i) for i in ids]
    responses = engine.generate(queries, 6)
    for q, r in zip(ids, responses):  # batched, left-padded = the prompt alone, and only what follows it
        alone = engine.policy.generate(input_ids=torch.tensor([q]), max_new_tokens=6, min_new_tokens=2,
                                       do_sample=False, pad_token_id=tok.pad_token_id)[0].tolist()
        assert alone[:len(q)] == q
        assert r.tolist() == alone[len(q):][:len(r)] and 1 <= len(r) <= 6
    decoded = engine.decode(responses)
    assert decoded == tok.batch_decode([r.tolist() for r in responses], skip_special_tokens=True)
    assert not any("Summarize" in t or "Person" in t for t in decoded)

    reward = RewardSettings(model=str(tiny["dir"] / "reward"), revision=None, not_hate_label="nothate",
                            hate_label="hate", include_prompt=False, batch_size=2, allow_pickle=False)
    scorer = build_scorer(reward, CPU)
    rtok = scorer.tokenizer
    assert encode_for_classifier(rtok, list(texts), decoded, False, 512) == rtok(decoded)["input_ids"]
    # with include_prompt the classifier sees the instruction text, never the chat markup
    with_prompt = encode_for_classifier(rtok, list(texts), decoded, True, 512)
    assert with_prompt == rtok([join(t, d) for t, d in zip(texts, decoded)])["input_ids"]
    assert not any("<|user|>" in rtok.decode(i) for i in with_prompt)

    # a fresh adapter is the identity: KL 0 against the adapter-disabled reference
    resp = [r.tolist() for r in responses]
    kl, _, summed = reference_stats(engine.policy, tok, list(ids), resp, 2, "cpu")
    assert kl == pytest.approx([0, 0], abs=1e-6) and summed == pytest.approx([0, 0], abs=1e-5)
    stats = engine.step(queries, responses, scorer.score(list(texts), decoded)[0])
    assert stats["tokens/responses_len_mean"] == pytest.approx(sum(map(len, responses)) / 2)  # TRL's own count

    # KL/log-probs: per response token, the same as the unpadded prompt + response alone
    engine.policy.eval()  # the PPO step left it in training mode (GPT-2's own dropout)
    batched = response_logprobs(engine.policy, tok, list(ids), resp, 2, "cpu")
    for q, r, lp in zip(ids, resp, batched):
        with torch.no_grad():
            logits = engine.policy(input_ids=torch.tensor([q + r])).logits[0]
        want = torch.log_softmax(logits[len(q) - 1:-1], -1).gather(-1, torch.tensor(r)[:, None]).squeeze(-1)
        assert lp.shape == (len(r),) and torch.allclose(lp, want, atol=1e-4)
    # perplexity under the starting policy (the adapter off), from the same log-probs
    _, perplexity, _ = reference_stats(engine.policy, tok, list(ids), resp, 2, "cpu")
    with engine.policy.disable_adapter():
        ref = response_logprobs(engine.policy, tok, list(ids), resp, 2, "cpu")
    assert perplexity == pytest.approx([float(torch.exp(-r.mean())) for r in ref], rel=1e-5)


def test_generation_stops_at_every_end_of_turn_token_the_model_lists(tiny):
    from detoxkit.generation import cut_at_stop, decode, stop_ids

    model, tok, _ = load_policy(policy(tiny["dir"] / "llama"), CPU, None)
    eot = tok.convert_tokens_to_ids("<|eot|>")
    assert stop_ids(model, tok) == sorted({tok.eos_token_id, eot})
    assert cut_at_stop([5, 6, eot, 7, tok.eos_token_id], stop_ids(model, tok), tok.pad_token_id) == [5, 6, eot]
    assert cut_at_stop([5, 6, tok.pad_token_id, tok.pad_token_id], stop_ids(model, tok), tok.pad_token_id) == [5, 6]
    assert decode(tok, [[eot]], [eot]) == [""]


def test_gpt2_without_a_pad_token_pads_with_eos_and_rollouts_stop_there(tiny):
    model, tok, _ = load_policy(policy(tiny["dir"] / "gpt2"), CPU, None)
    assert tok.pad_token == tok.eos_token == "<|endoftext|>" and tok.padding_side == "right"
    from detoxkit.generation import generate

    torch.manual_seed(0)
    rows = generate(model, tok, [tok("Summary:")["input_ids"]] * 3, 3, "cpu", max_new_tokens=40, do_sample=True,
                    top_k=0, min_length=1)
    for row in rows:  # cut at the first EOS (which is also the pad token): nothing after it
        assert tok.eos_token_id not in row[:-1]


@pytest.mark.parametrize("name, chat", [("policy", False), ("gpt2", False), ("llama", True)])
def test_long_dialogues_are_cut_and_the_instruction_kept(tiny, name, chat):
    from detoxkit.data import PromptEncoder

    tok = load_tokenizer("policy.model", str(tiny["dir"] / name), None)
    encoder = PromptEncoder(tok, PromptSettings(template=TEMPLATE, chat_template=chat), 60)
    dialogue = " ".join(f"#Person{1 + i % 2}#: we meet at {i} o'clock." for i in range(40))
    text, ids, cut = encoder(dialogue)
    assert cut and len(ids) <= 60 and len(ids) >= 55  # cut to fit, not far below
    assert text.startswith("\nSummarize the following conversation.\n\n#Person1#: we meet at 0")
    assert text.endswith("\n\nSummary:\n") and text.count("Summary:") == 1
    tail = tok.decode(ids, skip_special_tokens=False)
    assert ("Summary:\n<|eot|>\n<|assistant|>\n" if chat else "Summary:") in tail
    short, short_ids, short_cut = encoder("#Person1#: hi")
    assert not short_cut and short == TEMPLATE.format(dialogue="#Person1#: hi")
    with pytest.raises(PipelineError, match=r"prompt.template alone takes \d+ tokens.*data.max_prompt_tokens \(8\)"):
        PromptEncoder(tok, PromptSettings(template=TEMPLATE, chat_template=chat), 8)


def test_chat_template_is_refused_for_a_tokenizer_without_one(tiny):
    from detoxkit.data import PromptEncoder

    tok = load_tokenizer("policy.model", str(tiny["dir"] / "gpt2"), None)
    with pytest.raises(PipelineError, match="prompt.chat_template is true but the tokenizer of .*gpt2 has no chat "
                                            "template; set prompt.chat_template: false"):
        PromptEncoder(tok, PromptSettings(template=TEMPLATE, chat_template=True), 512)


def test_causal_sft_trains_on_the_summary_and_eos_only(tiny):
    import datasets

    from detoxkit.data import tokenize_for_sft

    tok = load_tokenizer("policy.model", str(tiny["dir"] / "llama"), None)
    prompt = tok("Summarize: #Person1#: hi\nSummary:\n")["input_ids"]
    rows = datasets.Dataset.from_dict({"input_ids": [prompt], "summary": ["They say hi."], "query": ["q"]})
    out = tokenize_for_sft(rows, tok, 32, causal=True)[0]
    summary = tok("They say hi.", add_special_tokens=False)["input_ids"]
    assert out["input_ids"] == prompt + summary + [tok.eos_token_id]
    assert out["labels"] == [-100] * len(prompt) + summary + [tok.eos_token_id]
    long = tokenize_for_sft(rows.map(lambda r: {"summary": "word " * 100}), tok, 8, causal=True)[0]
    assert len(long["labels"]) - len(prompt) == 8 and long["labels"][-1] == tok.eos_token_id


def test_lora_auto_uses_peft_defaults_per_architecture_and_typos_list_the_layers(tiny, tmp_path):
    auto = LoraSettings(r=2, alpha=4, dropout=0.0, target_modules="auto")
    adapted = {}
    for name in ("policy", "gpt2", "llama"):
        model, _, _ = load_policy(policy(tiny["dir"] / name), CPU, None)
        peft_model = attach_lora(model, auto)
        layers = {n.split(".lora_A")[0] for n, _ in peft_model.named_parameters() if "lora_A" in n}
        adapted[name] = sorted({layer.split(".")[-1] for layer in layers})
    assert adapted == {"policy": ["q", "v"], "gpt2": ["c_attn"], "llama": ["q_proj", "v_proj"]}

    config = load_config("policy.model", str(tiny["dir"] / "gpt2"), None)
    with pytest.raises(PipelineError, match=r"lora.target_modules \['q_proj'\] match no layer of the 'gpt2' policy; "
                                            r"its linear layers are \[.*'c_attn'.*\]"):
        check_lora_targets(config, LoraSettings(r=2, alpha=4, dropout=0.0, target_modules=["c_attn", "q_proj"]))
    config.model_type = "xglm"  # a type PEFT has no default for
    with pytest.raises(PipelineError, match="sft.lora.target_modules is auto, but PEFT has no default layers for "
                                            "'xglm' models"):
        check_lora_targets(config, auto, "sft.lora")


def test_prompt_and_response_must_fit_a_causal_policys_window(tiny):
    import dataclasses

    from conftest import ROOT

    from detoxkit.config import load_params
    from detoxkit.models import check_context

    params = load_params(ROOT / "params.yaml")  # 512 prompt tokens, rollouts of up to 399 new tokens
    config = load_config("policy.model", str(tiny["dir"] / "gpt2"), None)
    check_context(config, params)  # GPT-2's 1024 positions: fits
    config.n_positions = 800
    with pytest.raises(PipelineError, match=r"reads at most 800 tokens, but a prompt of up to data.max_prompt_tokens "
                                            r"\(512\) plus 399 new tokens \(generation.output_max_length\) needs 911; "
                                            r"lower data.max_prompt_tokens to 401 or less"):
        check_context(config, params)
    config.n_positions = 300
    with pytest.raises(PipelineError, match=r"lower generation.output_max_length well below 300"):
        check_context(config, params)
    t5 = load_config("policy.model", str(tiny["dir"] / "policy"), None)
    check_context(t5, dataclasses.replace(params, data=dataclasses.replace(params.data, max_prompt_tokens=10**6)))
