"""Stage `lineage`: pin down exactly which models, data and adapter the pipeline uses, so a change reruns its stages.

    python stages/lineage.py --out metrics/models

Writes one small JSON file per input: policy.json, reward.json, judges.json (all judges), data.json
(data.source) and adapter.json (policy.adapter). A local file or folder is named by a content hash of its
files (cached by size and modification time in .cache/, so an unchanged folder is not read again); a Hub id
by the commit its revision resolves to (asked of the Hub, or read from the local Hugging Face cache when
offline); a Python scorer by the package version that provides it, or its file's sha256. DVC runs this stage
on every `dvc repro` (`always_changed`); the stages that read an input depend on its file, so they rerun
exactly when it changed. The files are DVC metrics: `dvc metrics diff` shows the resolved commit or hash.
"""
import argparse
import logging
from pathlib import Path

from detoxkit.config import load_params
from detoxkit.io import run_stage, write_json
from detoxkit.manifest import CACHE, adapter_manifest, data_manifest, model_manifest, read_cache

log = logging.getLogger("detox.lineage")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True, help="folder for one manifest file per input")
    args = parser.parse_args()

    params = load_params()
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
