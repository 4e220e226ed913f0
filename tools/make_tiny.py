"""Build a tiny offline policy/classifier pair and a dialogue file, so the DAG runs on a CPU with no network.

    python tools/make_tiny.py --out tiny

writes tiny/policy (T5, SentencePiece-style Unigram tokenizer trained here), tiny/reward (RoBERTa
sequence classifier with labels nothate/hate, byte-level BPE trained here), tiny/dialogues.jsonl
(synthetic DialogSum-shaped rows) and tiny/overrides.txt, the `-S` flags that point params.yaml at
them (`dvc exp run $(cat tiny/overrides.txt)`). Weights are random: this exercises code paths, it
does not detoxify anything. Everything is saved with save_pretrained, like any Hub model.
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
    "reward.batch_size": 8, "lora.r": 4, "lora.alpha": 8,
    "generation.output_min_length": 4, "generation.output_max_length": 12, "generation.batch_size": 8,
    "ppo.batch_size": 8, "ppo.mini_batch_size": 4, "ppo.max_steps": 4, "ppo.checkpoint_every": 1,
    "evaluation.num_samples": 8, "evaluation.max_new_tokens": 12, "evaluation.batch_size": 8,
    "sft.max_steps": 4, "sft.batch_size": 4, "sft.logging_steps": 1, "sft.eval_samples": 8,
    "sft.max_target_tokens": 32, "sft.eval_max_new_tokens": 12, "ppo.learning_rate": 0.001, "sft.lora.r": 4, "sft.lora.alpha": 8, "report.bootstrap_resamples": 500,
}


def tiny_params(out: str) -> dict:
    return {k: v.format(out=out) if isinstance(v, str) else v for k, v in TINY_PARAMS.items()}


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


def build_reward(out: Path, texts: list[str], labels=("nothate", "hate"), seed: int = 0, max_length: int = 128):
    """Tiny RoBERTa classifier with a byte-level BPE tokenizer; labels in the given id order."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import RobertaConfig, RobertaForSequenceClassification, RobertaTokenizerFast

    specials = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(texts, trainers.BpeTrainer(
        vocab_size=500, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
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


def build_all(out: Path, n_dialogues: int = 64, labels=("nothate", "hate"), seed: int = 0) -> dict:
    out = Path(out)
    write_dialogues(out / "dialogues.jsonl", n_dialogues, seed)
    texts = corpus(make_dialogues(n_dialogues, seed))
    build_policy(out / "policy", texts, seed)
    build_reward(out / "reward", texts, labels, seed)
    params = tiny_params(str(out))
    flags = " ".join(f"-S {k}={'null' if v is None else v}" for k, v in params.items())
    (out / "overrides.txt").write_text(flags + "\n", encoding="utf-8")
    return params


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="tiny", help="folder to write (default: tiny)")
    parser.add_argument("--dialogues", type=int, default=64, help="synthetic dialogues to write")
    parser.add_argument("--labels", default="nothate,hate", help="classifier labels in id order")
    args = parser.parse_args()
    # absolute paths, so experiments queued in DVC's temporary workspaces find the models too
    build_all(Path(args.out).resolve(), args.dialogues, tuple(args.labels.split(",")))
    print(f"wrote {args.out}/policy, {args.out}/reward, {args.out}/dialogues.jsonl")
    print(f"run the DAG on them: dvc exp run $(cat {args.out}/overrides.txt)")


if __name__ == "__main__":
    main()
