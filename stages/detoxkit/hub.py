"""Telling local folders from Hub ids, and turning Hub failures into one actionable message."""
from __future__ import annotations

import os
from pathlib import Path


def is_local(ref: str) -> bool:
    """A reference is local when it exists on disk or is written as a path (./x, /x, x/y/z, ~/x)."""
    if Path(ref).expanduser().exists():
        return True
    return ref.startswith((".", "/", "~")) or ref.count("/") > 1 or os.sep != "/" and os.sep in ref


def offline_hint(kind: str, ref: str, err: Exception) -> str:
    """Message for a Hub reference that could not be loaded (no network, no cache, typo)."""
    text = str(err).splitlines()[0] if str(err) else type(err).__name__
    offline = os.environ.get("HF_HUB_OFFLINE") == "1"
    why = "HF_HUB_OFFLINE=1 is set and it is not in the local cache" if offline else \
        "the Hugging Face Hub could not be reached or has no such repository, and nothing is cached"
    return (
        f"could not load {kind} {ref!r}: {why} ({type(err).__name__}: {text}). "
        f"Check the id, or use a local folder saved with save_pretrained (see the README's offline path: "
        f"local folders, HF_HUB_OFFLINE=1, and `python tools/make_tiny.py` for a tiny offline pair)"
    )
