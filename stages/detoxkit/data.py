"""Dialogue data: read a Hub dataset or a local file, filter by length, wrap in the prompt, split."""
from __future__ import annotations

import json
import logging
import math
from pathlib import Path

from .settings import DataSettings, PromptSettings
from .errors import PipelineError
from .hub import is_local, offline_hint, require_hub

log = logging.getLogger("detox.data")

FILE_BUILDERS = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet"}


def _check_jsonl(path: Path):
    """Each line UTF-8 JSON: a bad line is named here, not buried in the JSON reader's traceback."""
    with path.open("rb") as fh:
        for number, raw in enumerate(fh, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as err:
                raise PipelineError(f"{path} line {number} is not UTF-8 (byte {err.start} of the line: {err.reason}); "
                                    "re-save the file as UTF-8") from None
            if not line.strip():
                continue
            try:
                json.loads(line)
            except json.JSONDecodeError as err:
                why = err.msg.removesuffix(" at")
                raise PipelineError(f"{path} line {number} is not valid JSON ({why} at column {err.colno}); "
                                    "fix or remove that line (JSON Lines: one JSON object per line)") from None


def _check_utf8(path: Path):
    if path.suffix == ".parquet":
        return
    if path.suffix == ".jsonl":
        return _check_jsonl(path)
    try:
        with path.open(encoding="utf-8") as fh:
            while fh.read(1 << 20):
                pass
    except UnicodeDecodeError as err:
        raise PipelineError(
            f"{path} is not UTF-8 text (byte {err.start}: {err.reason}); re-save it as UTF-8"
        ) from None


def _local_files(path: Path) -> tuple[str, list[str]]:
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.suffix in FILE_BUILDERS)
    if not files:
        raise PipelineError(
            f"data.source {path} holds no .jsonl, .json, .csv or .parquet files; point it at a data file or folder"
        )
    kinds = {FILE_BUILDERS.get(p.suffix) for p in files}
    if None in kinds or len(kinds) != 1:
        raise PipelineError(
            f"data.source {path}: expected files of one kind among {', '.join(FILE_BUILDERS)}, found "
            + ", ".join(sorted({p.suffix or p.name for p in files}))
        )
    for p in files:
        size = p.stat().st_size
        if p.suffix != ".parquet" and (size == 0 or size < 1 << 20 and not p.read_bytes().strip()):
            raise PipelineError(f"data.source {p} is empty (no rows: {p.stat().st_size} bytes, whitespace at most); "
                                "point data.source at a file with data")
        _check_utf8(p)
    return kinds.pop(), [str(p) for p in files]


def load_source(settings: DataSettings):
    """Return the raw `datasets.Dataset` named by data.source (a local path or a Hub dataset id)."""
    import datasets

    datasets.disable_progress_bars()
    source = settings.source
    if is_local(source):
        path = Path(source)
        if not path.exists():
            raise PipelineError(f"data.source {source} does not exist; give an existing file/folder or a Hub dataset id")
        if path.is_dir() and any((path / f).exists() for f in ("dataset_info.json", "dataset_dict.json")):
            ds = datasets.load_from_disk(str(path))
            if not isinstance(ds, datasets.DatasetDict):
                _check_split(settings, ["train"], "a saved Dataset (one split)")
                return ds
            _check_split(settings, list(ds), "a saved DatasetDict")
            return ds[settings.split]
        builder, files = _local_files(path)
        _check_split(settings, ["train"], f"a local {builder} source, read as one split")
        try:
            return datasets.load_dataset(builder, data_files=files, split="train")
        except Exception as err:  # a malformed file: say which and why, not a 40-frame traceback
            raise PipelineError(f"data.source {source} could not be read as {builder}: "
                                f"{str(err).strip() or type(err).__name__}") from None
    require_hub("dataset", source)
    try:
        return datasets.load_dataset(source, split=settings.split, revision=settings.revision)
    except ValueError as err:
        if "Unknown split" in str(err) or "Bad split" in str(err):  # the Hub answered: no such split
            raise PipelineError(f"data.split {settings.split!r}: the dataset {source} has no such split "
                                f"({str(err).splitlines()[0]}); set data.split to one of its splits") from None
        raise PipelineError(offline_hint("dataset", source, err)) from None
    except Exception as err:
        raise PipelineError(offline_hint("dataset", source, err)) from None


def _check_split(settings: DataSettings, splits: list[str], what: str):
    if settings.split not in splits:
        raise PipelineError(f"data.split is {settings.split!r}, but data.source {settings.source} is {what} with the "
                            f"splits {splits}; set data.split to one of them")


def columns_of(settings: DataSettings) -> list[tuple[str, str]]:
    """(setting, column) for every column the settings name."""
    named = [("data.dialogue_column", settings.dialogue_column), ("data.summary_column", settings.summary_column),
             ("data.filter", settings.filter)]
    return [(key, col) for key, col in named if col is not None]


def check_columns(ds, settings: DataSettings):
    """Every named column exists; dotted names reach nested fields (datasets' flatten: prompt.text)."""
    if any(col not in ds.column_names and "." in col for _, col in columns_of(settings)):
        ds = ds.flatten()
    for key, col in columns_of(settings):
        if col not in ds.column_names:
            raise PipelineError(
                f"data.source {settings.source} has no column {col!r} (columns found, nested fields dotted: "
                f"{', '.join(ds.flatten().column_names)}); set {key}"
            )
    return ds


def apply_filter(ds, settings: DataSettings):
    """Keep the rows whose data.filter column is true (a missing value counts as false)."""
    if settings.filter is None:
        return ds
    values = ds[settings.filter]
    for row, value in enumerate(values, 1):
        if value is not None and not isinstance(value, bool):
            raise PipelineError(
                f"data.filter names {settings.filter!r}, but row {row} holds {value!r} there, not true/false; "
                "name a boolean column (RealToxicityPrompts: challenging) or set data.filter: null"
            )
    kept = ds.select([i for i, value in enumerate(values) if value is True])
    log.info("data.filter %s: kept %d of %d rows", settings.filter, len(kept), len(ds))
    if len(kept) == 0:
        raise PipelineError(f"no row has data.filter {settings.filter!r} true; check the column or set data.filter: "
                            "null")
    return kept


def normalize(text: str) -> str:
    """Text with every run of whitespace made one space, stripped: what the length window counts, and what makes two
    prompts the same prompt (a file appended to itself, a copy with other line breaks)."""
    return " ".join(text.split())


def in_window(text, min_chars: int, max_chars: int) -> bool:
    """The lab's filter: keep min_chars < len(text) <= max_chars, counted on the normalized text (so a whitespace-only
    dialogue never passes data.min_chars)."""
    return isinstance(text, str) and min_chars < len(normalize(text)) <= max_chars


def distinct(prompts: list[str]) -> list[int]:
    """Positions of the first row of each distinct (normalized) prompt, in order."""
    seen, keep = set(), []
    for i, prompt in enumerate(prompts):
        key = normalize(prompt)
        if key not in seen:
            seen.add(key)
            keep.append(i)
    return keep


def check_no_leak(split, where: str):
    """No test prompt is also a train prompt (normalized): the evaluation would score prompts the policy trained on."""
    train = {normalize(q) for q in split["train"]["query"]}
    leaked = [q for q in split["test"]["query"] if normalize(q) in train]
    if leaked:
        raise PipelineError(
            f"{where}: {len(leaked)} of {len(split['test'])} test prompts are also train prompts (e.g. "
            f"{normalize(leaked[0])[:80]!r}), so the evaluation would score prompts the policy trained on; rebuild "
            "it with `dvc repro -f prepare` (prepare keeps one row per distinct prompt before it splits)")


def make_prompt(template: str, dialogue: str) -> str:
    return template.format(dialogue=dialogue)


class PromptEncoder:
    """Token ids of the prompt for one dialogue, never longer than `max_tokens`.

    The instruction is the filled template; with `chat` it is sent as one user turn through the
    tokenizer's own chat template (with the generation prompt, so the model answers as the assistant).
    A prompt that is too long has its dialogue cut (its end dropped); the template's own text, such as
    the closing "Summary:", always stays.
    """

    def __init__(self, tokenizer, prompt: PromptSettings, max_tokens: int):
        if prompt.chat_template and not getattr(tokenizer, "chat_template", None):
            raise PipelineError(
                f"prompt.chat_template is true but the tokenizer of {tokenizer.name_or_path} has no chat template; "
                "set prompt.chat_template: false (a plain prompt), or use the model's chat/instruct version"
            )
        self.tokenizer, self.template, self.chat = tokenizer, prompt.template, prompt.chat_template
        self.max_tokens = max_tokens
        overhead = len(self.encode(make_prompt(self.template, "")))
        if overhead >= max_tokens:
            raise PipelineError(
                f"prompt.template alone takes {overhead} tokens, which leaves no room for a dialogue within "
                f"data.max_prompt_tokens ({max_tokens}); raise data.max_prompt_tokens or shorten the template"
            )

    def encode(self, text: str) -> list[int]:
        if self.chat:
            from jinja2 import TemplateError
            from jinja2.exceptions import SecurityError

            try:
                return list(self.tokenizer.apply_chat_template([{"role": "user", "content": text}], tokenize=True,
                                                               add_generation_prompt=True))
            except TemplateError as err:  # the template is the tokenizer's code, run in Jinja's sandbox
                what = ("tries to reach outside Jinja's sandbox" if isinstance(err, SecurityError)
                        else "cannot be rendered")
                raise PipelineError(
                    f"prompt.chat_template is true, but the chat template of the tokenizer in "
                    f"{self.tokenizer.name_or_path} {what} ({type(err).__name__}: {str(err).splitlines()[0][:200]}); "
                    "use a tokenizer with a trusted chat template (tokenizer_config.json: chat_template), or set "
                    "prompt.chat_template: false") from None
        return self.tokenizer(text)["input_ids"]

    def __call__(self, dialogue: str) -> tuple[str, list[int], bool]:
        """(instruction text, prompt ids, whether the dialogue was cut)."""
        text = make_prompt(self.template, dialogue)
        ids = self.encode(text)
        if len(ids) <= self.max_tokens:
            return text, ids, False
        pieces = self.tokenizer(dialogue, add_special_tokens=False, return_offsets_mapping=self.tokenizer.is_fast)
        keep = len(pieces["input_ids"])
        while len(ids) > self.max_tokens:
            keep -= len(ids) - self.max_tokens
            if self.tokenizer.is_fast:
                cut = dialogue[: pieces["offset_mapping"][keep - 1][1]] if keep > 0 else ""
            else:
                cut = self.tokenizer.decode(pieces["input_ids"][:max(keep, 0)])
            text = make_prompt(self.template, cut)
            ids = self.encode(text)
        return text, ids, True


def reference_text(value, row: int, settings: DataSettings) -> str:
    """A reference summary as text: numbers are converted, anything else that is not text is refused."""
    if isinstance(value, str):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return str(value)
    raise PipelineError(
        f"data.source {settings.source}: row {row} has {settings.summary_column!r} = {value!r}, not text; "
        "fill in a reference summary or drop the row"
    )


def split_sizes(n: int, test_size: float) -> tuple[int, int]:
    """(train, test) rows that train_test_split makes of n rows: test is ceil(test_size * n)."""
    n_test = math.ceil(test_size * n)
    return n - n_test, n_test


def prepare(ds, settings: DataSettings, prompt: PromptSettings, tokenizer, seed: int):
    """Filter, prompt, tokenize, keep one row per distinct prompt, and split; returns a DatasetDict with train/test."""
    ds = apply_filter(check_columns(ds, settings), settings)
    n_read = len(ds)
    texts = ds[settings.dialogue_column]
    n_blank = sum(1 for text in texts if not isinstance(text, str) or not text.strip())
    # Rows kept, by their position in the source, so a bad one can be named as the file's row.
    kept = [i for i, text in enumerate(texts) if in_window(text, settings.min_chars, settings.max_chars)]
    ds = ds.select(kept)
    if len(ds) == 0:
        raise PipelineError(
            f"no dialogues left after the length filter: read {n_read}, kept 0 with "
            f"{settings.min_chars} < characters <= {settings.max_chars} (whitespace collapsed; {n_blank} empty or "
            "whitespace-only); widen data.min_chars/data.max_chars"
        )
    summaries = None if settings.summary_column is None else [  # None: prompt-only, no references
        reference_text(v, kept[i] + 1, settings) for i, v in enumerate(ds[settings.summary_column])]
    encoder = PromptEncoder(tokenizer, prompt, settings.max_prompt_tokens)
    n_cut = 0

    def encode(batch, indices):
        nonlocal n_cut
        queries, ids, cut = zip(*map(encoder, batch[settings.dialogue_column]))
        n_cut += sum(cut)
        out = {
            "query": list(queries),  # the instruction as text (what the classifier sees with include_prompt)
            "input_ids": [list(i) for i in ids],  # what the policy sees (chat markup included)
            "dialogue": batch[settings.dialogue_column],
        }
        if summaries is not None:
            out["summary"] = [summaries[i] for i in indices]
        return out

    ds = ds.select_columns([settings.dialogue_column])  # the summaries come from the checked list above
    ds = ds.map(encode, batched=True, with_indices=True, remove_columns=ds.column_names)
    n_encoded = len(ds)
    # One row per distinct prompt (the first): a repeated row would land in both splits, and the evaluation would
    # score prompts the policy trained on. Two dialogues cut to the same prompt count as one.
    unique = distinct(ds["query"])
    if len(unique) < n_encoded:
        ds = ds.select(unique)
    n_repeated = n_encoded - len(ds)
    if len(ds) < 2:
        raise PipelineError(f"only {len(ds)} distinct dialogue is left after the length filter ({n_repeated} repeated "
                            "prompts dropped); at least 2 are needed to split")
    n_train, _ = split_sizes(len(ds), settings.test_size)
    if n_train < 1:
        raise PipelineError(
            f"data.test_size {settings.test_size} leaves no train prompts of the {len(ds)} dialogues kept; "
            "lower data.test_size or add data"
        )
    split = ds.train_test_split(test_size=settings.test_size, shuffle=settings.shuffle, seed=seed)
    if n_cut:
        log.info("%d of %d prompts were longer than data.max_prompt_tokens (%d): their dialogues were cut",
                 n_cut, n_encoded, settings.max_prompt_tokens)
    log.info("read %d rows, kept %d with a text in (%d, %d] chars (whitespace collapsed; %d empty or whitespace-only "
             "dropped), %d repeated prompts dropped: %d train, %d test", n_read, n_encoded, settings.min_chars,
             settings.max_chars, n_blank, n_repeated, len(split["train"]), len(split["test"]))
    return split


def load_prepared(path):
    import datasets

    datasets.disable_caching()  # map()/filter() caches would land inside the DVC output and modify it
    path = Path(path)
    if not (path / "dataset_dict.json").exists():
        raise PipelineError(f"{path} holds no prepared dataset; run `dvc repro prepare` first")
    return datasets.load_from_disk(str(path))


def take(split, num_samples, what: str):
    """The first `num_samples` rows of `split` ("all" for every row); error if there are too few."""
    if num_samples == "all":
        return split
    if num_samples > len(split):
        raise PipelineError(
            f"{what} asks for {num_samples} samples but the test split has only {len(split)}; "
            f'lower it, use "all", or raise data.test_size'
        )
    return split.select(range(num_samples))


def tokenize_for_sft(split, tokenizer, max_target_tokens: int, causal: bool):
    """Training rows: the reference summary (truncated) is the target, the prompt its context.

    seq2seq: prompt ids as encoder input, summary ids as labels. causal: prompt + summary + EOS as one
    sequence, labels -100 over the prompt, so the loss covers the summary and EOS only (the collator
    pads labels with -100 too).
    """
    def encode(batch):
        if not causal:
            labels = tokenizer(text_target=batch["summary"], truncation=True, max_length=max_target_tokens)
            return {"labels": labels["input_ids"]}
        targets = tokenizer(batch["summary"], add_special_tokens=False, truncation=True,
                            max_length=max_target_tokens - 1)["input_ids"]
        targets = [t + [tokenizer.eos_token_id] for t in targets]
        return {"input_ids": [p + t for p, t in zip(batch["input_ids"], targets)],
                "labels": [[-100] * len(p) + t for p, t in zip(batch["input_ids"], targets)]}
    return split.map(encode, batched=True, remove_columns=[c for c in split.column_names if c != "input_ids"])
