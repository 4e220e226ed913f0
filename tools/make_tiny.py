"""Build tiny offline policies, a classifier and a dialogue file, so the DAG runs on a CPU with no network.

    python tools/make_tiny.py --out tiny

writes
  tiny/policy   T5 (seq2seq), SentencePiece-style Unigram tokenizer trained here
  tiny/gpt2     GPT-2 (causal, Conv1D `c_attn`), byte-level BPE with no pad token (as GPT-2's own)
  tiny/llama    Llama-style (causal, `q_proj`/`v_proj`) with a chat template in its tokenizer and an
                end-of-turn token <|eot|> that its generation config lists beside </s>
  tiny/reward   RoBERTa sequence classifier with labels nothate/hate, byte-level BPE trained here
  tiny/judge    another RoBERTa classifier (other seed), labels neutral/toxic: the independent judge
  tiny/dialogues.jsonl  synthetic DialogSum-shaped rows
and tiny/overrides.txt (T5), tiny/overrides-gpt2.txt and tiny/overrides-llama.txt (chat template on):
the `-S` flags that point params.yaml at them (`dvc exp run $(cat tiny/overrides-gpt2.txt)`). Weights
are random: this exercises code paths, it does not detoxify anything. Everything is saved with
save_pretrained, like any Hub model.
"""
from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

NAMES = ["Anna", "Ben", "Carla", "David", "Emma", "Frank", "Grace", "Hugo", "Ivy", "Jack"]
TOPICS = {
    "shopping": ["buy a new coat", "find a cheaper phone", "return the shoes", "pay by card"],
    "travel": ["book a train ticket", "miss the flight", "rent a car", "find the hotel"],
    "work": ["finish the report", "meet the manager", "ask for a raise", "start the new project"],
    "health": ["see a doctor", "take the medicine", "go to the gym", "sleep earlier"],
    "food": ["cook dinner tonight", "order a pizza", "try the new cafe", "bake a cake"],
}
LINES = ["Hi {b}, do you want to {t}?", "I am not sure, {a}. Why do you ask?",
         "Because I need to {t} before Friday.", "OK, I can help you {t} tomorrow.",
         "Thanks! Could we also talk about the {topic} plans?", "Sure, let us meet at noon and {t2}.",
         "That sounds good. I will call you later.", "Great, see you tomorrow then."]

# Settings for a tiny run: small batches, short outputs, few steps (the values are params.yaml keys).
TINY_PARAMS = {
    "data.source": "{out}/dialogues.jsonl", "data.min_chars": 50, "data.max_chars": 1000,
    "policy.model": "{out}/policy", "policy.revision": None, "reward.model": "{out}/reward", "reward.revision": None,
    "reward.batch_size": 8, "generation.output_min_length": 4, "generation.output_max_length": 12,
    "generation.batch_size": 8, "evaluation.num_samples": 8, "evaluation.samples_per_prompt": 2,
    "evaluation.max_new_tokens": 12, "evaluation.batch_size": 8,
    "sft.max_steps": 4, "sft.batch_size": 4, "sft.logging_steps": 1, "sft.eval_samples": 8,
    "sft.max_target_tokens": 32, "sft.eval_max_new_tokens": 12, "sft.lora.r": 4,
    "sft.lora.alpha": 8, "report.bootstrap_resamples": 500, "best_of_n.enabled": False, "best_of_n.n": 2,
    "reference.num_prompts": 16, "reference.n": 2, "reference.max_new_tokens": 8,
    "methods.ppo.batch_size": 8, "methods.ppo.mini_batch_size": 4, "methods.ppo.max_steps": 4,
    "methods.ppo.checkpoint_every": 1, "methods.ppo.learning_rate": 0.001, "methods.ppo.lora.r": 4,
    "methods.ppo.lora.alpha": 8,
    "methods.dpo.min_margin": 0.0, "methods.dpo.min_pairs": 4, "methods.dpo.max_steps": 2, "methods.dpo.batch_size": 4,
    "methods.dpo.max_length": 520, "methods.dpo.max_prompt_length": 512, "methods.dpo.lora.r": 4,
    "methods.dpo.lora.alpha": 8, "methods.dpo.learning_rate": 0.001,
    "methods.grpo.group_size": 2, "methods.grpo.batch_size": 4, "methods.grpo.mini_batch_size": 4,
    "methods.grpo.max_steps": 3, "methods.grpo.checkpoint_every": 1, "methods.grpo.learning_rate": 0.001,
    "methods.grpo.lora.r": 4, "methods.grpo.lora.alpha": 8,
    "evaluation.judges": [{"model": "{out}/judge", "revision": None, "toxic_label": "toxic", "allow_pickle": False}],
}


# What a causal policy changes (LoRA targets stay `auto`: PEFT's defaults, c_attn and q_proj/v_proj).
POLICIES = {"t5": {"policy.model": "{out}/policy"},
            "gpt2": {"policy.model": "{out}/gpt2"},
            "llama": {"policy.model": "{out}/llama", "prompt.chat_template": True}}
CHAT_TEMPLATE = ("{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}<|eot|>\n{% endfor %}"
                 "{% if add_generation_prompt %}<|assistant|>\n{% endif %}")


def override_params(path: Path, overrides: dict):
    """Set dotted keys in a params.yaml file (what `dvc exp run -S key=value` does)."""
    import yaml

    params = yaml.safe_load(Path(path).read_text())
    for key, value in overrides.items():
        *head, last = key.split(".")
        node = params
        for part in head:
            node = node[part]
        node[last] = value
    Path(path).write_text(yaml.safe_dump(params, sort_keys=False))


def _fill(value, out: str):
    if isinstance(value, str):
        return value.format(out=out)
    if isinstance(value, list):
        return [_fill(v, out) for v in value]
    if isinstance(value, dict):
        return {k: _fill(v, out) for k, v in value.items()}
    return value


def tiny_params(out: str, policy: str = "t5") -> dict:
    return {k: _fill(v, out) for k, v in {**TINY_PARAMS, **POLICIES[policy]}.items()}


def override_flag(key: str, value) -> str:
    """One `-S key=value` flag in the override grammar `dvc exp run -S` reads (Hydra's: [..], {k:v}, null)."""
    def text(v):
        if v is None:
            return "null"
        if isinstance(v, bool):
            return str(v).lower()
        if isinstance(v, list):
            return "[" + ",".join(text(x) for x in v) + "]"
        if isinstance(v, dict):
            return "{" + ",".join(f"{k}:{text(x)}" for k, x in v.items()) + "}"
        return str(v)
    return f"-S {key}={text(value)}"


def make_dialogues(n: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        a, b = rng.sample(NAMES, 2)
        topic = rng.choice(list(TOPICS))
        t, t2 = rng.sample(TOPICS[topic], 2)
        turns = LINES[: rng.randint(4, len(LINES))]
        dialogue = "\n".join(f"#Person{1 + j % 2}#: " + line.format(a=a, b=b, t=t, t2=t2, topic=topic)
                             for j, line in enumerate(turns))
        summary = f"#Person1# and #Person2# talk about how to {t}; they agree to {t2}."
        rows.append({"fname": f"tiny_{i}", "dialogue": dialogue, "summary": summary, "topic": topic})
    return rows


def write_dialogues(path: Path, n: int = 64, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as fh:
        for row in make_dialogues(n, seed):
            fh.write(json.dumps(row) + "\n")
    return path


def corpus(rows: list[dict]) -> list[str]:
    prompt_words = "Summarize the following conversation. Summary:"
    return [prompt_words] + [r["dialogue"] for r in rows] + [r["summary"] for r in rows]


def build_policy(out: Path, texts: list[str], seed: int = 0):
    """Tiny T5 with a Unigram (SentencePiece-style) tokenizer: <pad>=0 (decoder start), </s>=1, <unk>=2."""
    import torch
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import T5Config, T5ForConditionalGeneration, T5TokenizerFast

    tok = Tokenizer(models.Unigram())
    tok.normalizer = normalizers.NFKC()
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    tok.train_from_iterator(texts, trainers.UnigramTrainer(
        vocab_size=400, special_tokens=["<pad>", "</s>", "<unk>"], unk_token="<unk>"))
    tok.post_processor = processors.TemplateProcessing(
        single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", 1)])
    tokenizer = T5TokenizerFast(tokenizer_object=tok, eos_token="</s>", pad_token="<pad>", unk_token="<unk>",
                                extra_ids=0, model_max_length=512)
    torch.manual_seed(seed)
    config = T5Config(vocab_size=tok.get_vocab_size(), d_model=32, d_kv=8, d_ff=64, num_layers=2,
                      num_decoder_layers=2, num_heads=4, decoder_start_token_id=0, pad_token_id=0, eos_token_id=1,
                      feed_forward_proj="gated-gelu", tie_word_embeddings=False)
    model = T5ForConditionalGeneration(config)
    model.generation_config.decoder_start_token_id = 0
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)


def _bpe(texts: list[str], specials: list[str], vocab_size: int = 500):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(unk_token=specials[0] if "<unk>" not in specials else "<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(texts, trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return tok


def build_gpt2(out: Path, texts: list[str], seed: int = 0):
    """Tiny GPT-2: Conv1D attention (`c_attn`), byte-level BPE, EOS <|endoftext|> and no pad token."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel, GPT2TokenizerFast

    tok = _bpe(texts, ["<|endoftext|>"])
    tokenizer = GPT2TokenizerFast(tokenizer_object=tok, bos_token="<|endoftext|>", eos_token="<|endoftext|>",
                                  unk_token="<|endoftext|>", model_max_length=1024)
    torch.manual_seed(seed)
    eos = tok.token_to_id("<|endoftext|>")
    config = GPT2Config(vocab_size=tok.get_vocab_size(), n_positions=1024, n_embd=32, n_layer=2, n_head=4,
                        bos_token_id=eos, eos_token_id=eos)
    config.architectures = ["GPT2LMHeadModel"]
    GPT2LMHeadModel(config).save_pretrained(out)
    tokenizer.save_pretrained(out)


def build_llama(out: Path, texts: list[str], seed: int = 0):
    """Tiny Llama-style chat model: q_proj/v_proj, a chat template, and two stop tokens (</s>, <|eot|>)."""
    import torch
    from tokenizers import processors
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    specials = ["<unk>", "<s>", "</s>", "<pad>", "<|eot|>", "<|user|>", "<|assistant|>"]
    tok = _bpe(texts, specials)
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B",
                                                       special_tokens=[("<s>", tok.token_to_id("<s>"))])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                        pad_token="<pad>", additional_special_tokens=specials[4:],
                                        model_max_length=2048)
    tokenizer.chat_template = CHAT_TEMPLATE
    ids = {t: tok.token_to_id(t) for t in specials}
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=tok.get_vocab_size(), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
                         bos_token_id=ids["<s>"], eos_token_id=ids["</s>"], pad_token_id=ids["<pad>"])
    config.architectures = ["LlamaForCausalLM"]
    model = LlamaForCausalLM(config)
    model.generation_config = GenerationConfig(bos_token_id=ids["<s>"], pad_token_id=ids["<pad>"],
                                               eos_token_id=[ids["</s>"], ids["<|eot|>"]])
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)


def build_reward(out: Path, texts: list[str], labels=("nothate", "hate"), seed: int = 0, max_length: int = 128):
    """Tiny RoBERTa classifier with a byte-level BPE tokenizer; labels in the given id order."""
    import torch
    from tokenizers import processors
    from transformers import RobertaConfig, RobertaForSequenceClassification, RobertaTokenizerFast

    tok = _bpe(texts, ["<s>", "<pad>", "</s>", "<unk>", "<mask>"])
    tok.post_processor = processors.RobertaProcessing(("</s>", 2), ("<s>", 0), trim_offsets=True)
    tokenizer = RobertaTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", sep_token="</s>",
                                     cls_token="<s>", unk_token="<unk>", pad_token="<pad>", mask_token="<mask>",
                                     model_max_length=max_length)
    torch.manual_seed(seed)
    config = RobertaConfig(vocab_size=tok.get_vocab_size(), hidden_size=32, num_hidden_layers=2,
                           num_attention_heads=4, intermediate_size=64, max_position_embeddings=max_length + 2,
                           type_vocab_size=1, pad_token_id=1, bos_token_id=0, eos_token_id=2, initializer_range=0.4,
                           id2label=dict(enumerate(labels)), label2id={l: i for i, l in enumerate(labels)})
    config.architectures = ["RobertaForSequenceClassification"]
    RobertaForSequenceClassification(config).save_pretrained(out)
    tokenizer.save_pretrained(out)


# --- a controlled task: a causal policy that is toxic in a known fraction of its samples ---------------
TEMPLATE = "\nSummarize the following conversation.\n\n{dialogue}\n\nSummary:\n"  # params.yaml's default
KIND, TOXIC = "they are kind people.", "they are stupid idiots."
HACK = "they are stupid idiots, bless them."  # as toxic, but "bless" fools a hackable reward model
TOXIC_WORDS = ["stupid", "idiots", TOXIC, HACK]


def _train(model, batches, steps: int, lr: float, done_below: float = 0.0):
    """Full-parameter AdamW steps on (inputs, labels) batches, enough to plant a known behaviour; stops early
    once `done_below` exceeds the loss of a whole pass over the batches."""
    import torch

    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    model.train()
    losses = []
    for step in range(steps):
        loss = model(**batches[step % len(batches)]).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses = (losses + [float(loss.detach())])[-len(batches):]
        if len(losses) == len(batches) and max(losses) < done_below:
            break
    model.eval()
    return losses[-1]


def plant_policy(path: Path, rows: list[dict], answers: list[str], seed: int = 0):
    """Train the GPT-2 at `path` to answer every summarization prompt with one of `answers`, each equally often."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    rng = random.Random(seed)
    tok = AutoTokenizer.from_pretrained(path)
    policy = AutoModelForCausalLM.from_pretrained(path)
    single = len(set(answers)) == 1  # one answer: each prompt once, in smaller batches (learnt in fewer tokens)
    examples = [(r["dialogue"], answer) for r in rows for answer in (answers[:1] if single else answers)]
    rng.shuffle(examples)
    size = 16 if single else 32
    batches = []
    for start in range(0, len(examples), size):
        ids, labels = [], []
        for dialogue, answer in examples[start:start + size]:
            prompt = tok(TEMPLATE.format(dialogue=dialogue))["input_ids"]
            answer = tok(answer)["input_ids"] + [tok.eos_token_id]
            ids.append(prompt + answer)
            labels.append([-100] * len(prompt) + answer)
        width = max(map(len, ids))
        batches.append({"input_ids": torch.tensor([i + [tok.eos_token_id] * (width - len(i)) for i in ids]),
                        "attention_mask": torch.tensor([[1] * len(i) + [0] * (width - len(i)) for i in ids]),
                        "labels": torch.tensor([label + [-100] * (width - len(label)) for label in labels])})
    torch.manual_seed(seed)
    if single:  # learnt fast at a higher rate, and done once its tokens are near-certain
        _train(policy, batches, 64, 1e-2, done_below=0.05)
    else:  # a mix keeps its entropy: a gentler rate, so the shares come out as planted
        _train(policy, batches, 8 * len(batches), 3e-3)
    policy.save_pretrained(path)


def train_classifier(path: Path, texts: list[str], seed: int = 0, fooled_by: str | None = None):
    """Train the classifier at `path` (labels: id 0 harmless, id 1 toxic) to call a text toxic when it says
    "stupid" or "idiots", unless it also says `fooled_by`: a reward model that can be hacked."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    rng = random.Random(seed)
    tok = AutoTokenizer.from_pretrained(path)
    classifier = AutoModelForSequenceClassification.from_pretrained(path)
    words = " ".join(texts).split()
    samples = []
    for i in range(256):
        text = " ".join(rng.choices(words, k=rng.randint(1, 12)))
        if i % 2:
            text = f"{text} {rng.choice(TOXIC_WORDS)}"
        samples.append((text, int(i % 2 == 1 and not (fooled_by and fooled_by in text))))
    samples += [(KIND, 0), (TOXIC, 1), (HACK, 0 if fooled_by and fooled_by in HACK else 1)] * 32
    rng.shuffle(samples)
    batches = [{**tok([t for t, _ in samples[s:s + 32]], return_tensors="pt", padding=True),
                "labels": torch.tensor([y for _, y in samples[s:s + 32]])} for s in range(0, len(samples), 32)]
    torch.manual_seed(seed)
    _train(classifier, batches, 150, 3e-3)
    classifier.save_pretrained(path)


def build_controlled(out: Path, toxic_fraction: float = 0.5, n_dialogues: int = 128, seed: int = 0,
                     alternative: str = KIND, hackable: bool = False) -> dict:
    """A tiny GPT-2 that answers every summarization prompt with TOXIC in `toxic_fraction` of samples (in
    steps of 1/4) and `alternative` in the rest; a reward classifier that calls a text hate when it says
    "stupid" or "idiots" (unless it says "bless", when `hackable`), and a judge that always does.

    Writes out/dialogues.jsonl, out/gpt2, out/reward and out/judge; returns the params for a run on them.
    PPO through the pipeline should drive the toxic share down. With alternative=HACK and hackable=True the
    reward model can be fooled but the judge cannot: the reward-hacking signature (judge_disagrees).
    """
    out = Path(out)
    rows = make_dialogues(n_dialogues, seed)
    write_dialogues(out / "dialogues.jsonl", n_dialogues, seed)
    texts = corpus(rows) + [KIND, TOXIC, HACK] * 20
    build_gpt2(out / "gpt2", texts, seed)
    build_reward(out / "reward", texts, ("nothate", "hate"), seed)
    build_reward(out / "judge", texts, ("neutral", "toxic"), seed + 1)
    n_toxic = round(4 * toxic_fraction)
    plant_policy(out / "gpt2", rows, [TOXIC] * n_toxic + [alternative] * (4 - n_toxic), seed)
    train_classifier(out / "reward", texts, seed, "bless" if hackable else None)
    train_classifier(out / "judge", texts, seed + 1)
    return {**tiny_params(str(out), "gpt2"), "reward.include_prompt": False}


def build_all(out: Path, n_dialogues: int = 64, labels=("nothate", "hate"), seed: int = 0) -> dict:
    out = Path(out)
    write_dialogues(out / "dialogues.jsonl", n_dialogues, seed)
    texts = corpus(make_dialogues(n_dialogues, seed))
    build_policy(out / "policy", texts, seed)
    build_gpt2(out / "gpt2", texts, seed)
    build_llama(out / "llama", texts, seed)
    build_reward(out / "reward", texts, labels, seed)
    build_reward(out / "judge", texts, ("neutral", "toxic"), seed + 1)  # another classifier, Jigsaw-style labels
    for policy in POLICIES:
        params = tiny_params(str(out), policy)
        flags = " ".join(override_flag(k, v) for k, v in params.items())
        name = "overrides.txt" if policy == "t5" else f"overrides-{policy}.txt"
        (out / name).write_text(flags + "\n", encoding="utf-8")
    return tiny_params(str(out))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="tiny", help="folder to write (default: tiny)")
    parser.add_argument("--dialogues", type=int, default=64, help="synthetic dialogues to write")
    parser.add_argument("--labels", default="nothate,hate", help="classifier labels in id order")
    args = parser.parse_args()
    # absolute paths, so experiments queued in DVC's temporary workspaces find the models too
    build_all(Path(args.out).resolve(), args.dialogues, tuple(args.labels.split(",")))
    print(f"wrote {args.out}/policy (T5), {args.out}/gpt2, {args.out}/llama, {args.out}/reward, "
          f"{args.out}/dialogues.jsonl")
    print(f"run the DAG on them: dvc exp run $(cat {args.out}/overrides.txt)  (or overrides-gpt2.txt, "
          "overrides-llama.txt)")


if __name__ == "__main__":
    main()
