"""params.yaml's notes, kept through DVC's Hydra composition.

`dvc exp run -S key=value` (and `-S preset=offline`, `-S size=smoke`) composes params.yaml afresh from the fixed,
documented defaults in conf/params.yaml and the flags given (conf/presets.yaml), and writes it back without a
single comment. `annotate` puts the defaults' one-line notes back beside the same keys, changing no value: the
`lineage` stage, which runs first on every `dvc repro` and `dvc exp run`, calls it, so params.yaml reads as
documented after any experiment.
"""
import io
import json
import re
from pathlib import Path

from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap
from ruamel.yaml.scalarstring import LiteralScalarString


def _round_trip() -> YAML:
    yaml = YAML()  # round trip: comments, key order and scalar spelling kept; YAML 1.2, as DVC reads it
    yaml.indent(mapping=2, sequence=4, offset=2)
    yaml.width = 4096  # never fold a line that the defaults wrote on one
    yaml.preserve_quotes = True
    yaml.representer.add_representer(type(None), lambda r, _: r.represent_scalar("tag:yaml.org,2002:null", "null"))
    return yaml


def _overlay(node: CommentedMap, values: dict) -> CommentedMap:
    """`node` (the defaults, with their comments) made to hold exactly `values`."""
    for key in [k for k in node if k not in values]:
        del node[key]
    for key, value in values.items():
        old = node.get(key)
        if isinstance(old, CommentedMap) and isinstance(value, dict):
            _overlay(old, value)
        elif key not in node or _canonical(old) != _canonical(value):
            node[key] = LiteralScalarString(value) if isinstance(value, str) and "\n" in value else value
            _say_default(node, key, old)
    return node


def _say_default(node: CommentedMap, key, default) -> None:
    """A changed value's note describes the default, so it says which: `# default 10: the lab's 10`."""
    token = (node.ca.items.get(key) or [None, None, None])[2]
    if token is not None and "#" in token.value and not isinstance(default, (dict, list)):
        shown = json.dumps(default) if isinstance(default, (str, bool)) or default is None else str(default)
        token.value = token.value.replace("# ", f"# default {shown}: ", 1)


def _canonical(value) -> str:
    """One spelling per value (1 and true and 1.0 differ, 3e-4 and 0.0003 do not): a default whose value is
    unchanged keeps its own spelling and note; lists and mappings compare whole."""
    return json.dumps(value, sort_keys=True)


def annotate(params: Path, defaults: Path) -> bool:
    """Give `params` the notes of `defaults` for every key both hold; True when the file was rewritten.

    Only a file with no note at all is touched (what DVC's composition writes): a params.yaml that a person edited
    and annotated keeps their words. Values are never changed: the new text is read back and compared with the old
    values before it is written (atomically), and nothing is written when the two texts are already the same."""
    from detoxkit.io import write_text

    params, defaults = Path(params), Path(defaults)
    safe = YAML(typ="safe", pure=True)
    old_text = params.read_text(encoding="utf-8")
    if any(re.search(r"(^|\s)#", line) for line in old_text.splitlines()):
        return False  # it has notes of its own (or a "#" inside a value: left alone, never guessed at)
    values = safe.load(old_text)
    if not isinstance(values, dict) or not defaults.is_file():
        return False
    yaml = _round_trip()
    buffer = io.StringIO()
    yaml.dump(_overlay(yaml.load(defaults.read_text(encoding="utf-8")), values), buffer)
    text = buffer.getvalue()
    if text == old_text or _canonical(safe.load(text)) != _canonical(values):
        return False
    write_text(params, text)
    return True
