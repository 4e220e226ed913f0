"""Stage `lineage`: pin down exactly which models, data and adapter the pipeline uses, so a change reruns its stages.

    python stages/lineage.py --out metrics/models

Writes one small JSON file per input: policy.json, reward.json, judges.json (all judges), data.json
(data.source) and adapter.json (policy.adapter). A local file or folder is named by a content hash of its
files (cached by size and modification time in .cache/, so an unchanged folder is not read again); a Hub id
by the commit its revision resolves to (asked of the Hub, or read from the local Hugging Face cache when
offline); a Python scorer by the package version that provides it, or its file's sha256, with the versions of
the packages it imports and the hashes of its data files (DETOX_DATA in its module, else the files beside a .py
scorer in a folder of its own: detoxkit.manifest.scorer_inputs). DVC runs this stage
on every `dvc repro` (`always_changed`); the stages that read an input depend on its file, so they rerun
exactly when it changed. `dvc metrics diff --targets metrics/models` shows the resolved commit or hash.

It also gives params.yaml back its one-line notes (detoxkit.params_file.annotate) after `dvc exp run -S ...` has
rewritten it without them, changing no value.
"""
import argparse
import logging
from pathlib import Path

from detoxkit.config import load_params
from detoxkit.io import run_stage, write_json
from detoxkit.manifest import CACHE, adapter_manifest, data_manifest, model_manifest, read_cache
from detoxkit.params_file import annotate

log = logging.getLogger("detox.lineage")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True, help="folder for one manifest file per input")
    args = parser.parse_args()

    params = load_params()  # first: a duplicate key or a bad value is refused before anything is rewritten
    try:
        if annotate(Path("params.yaml"), Path("conf/params.yaml")):
            log.info("params.yaml was composed by `dvc exp run` from conf/params.yaml and its -S flags: its notes are "
                     "restored (values unchanged); change a default in conf/params.yaml, one run's value with -S")
    except Exception as exc:  # the notes are a courtesy: never a reason to stop a run
        log.warning("params.yaml: notes not restored (%s: %s); values unchanged", type(exc).__name__, exc)
    cache = read_cache()
    out = Path(args.out)
    entries = {
        "policy": model_manifest("policy.model", params.policy.model, params.policy.revision, cache),
        "reward": model_manifest("reward.model", params.reward.model, params.reward.revision, cache),
        "data": data_manifest(params.data.source, params.data.revision, cache),
        "adapter": adapter_manifest(params.policy.adapter, cache),
    }
    for name, entry in entries.items():
        write_json(out / f"{name}.json", entry)
        log.info("%s: %s -> %s", name, entry["model"], entry["resolved"])
    judges = {j.name: model_manifest(f"evaluation.judges[{i}].model", j.model, j.revision, cache)
              for i, j in enumerate(params.evaluation.judges)}  # {} when judging is off
    write_json(out / "judges.json", judges)
    for name, entry in judges.items():
        log.info("judge %s: %s -> %s", name, entry["model"], entry["resolved"])
    write_json(CACHE, cache)


if __name__ == "__main__":
    run_stage(main)
