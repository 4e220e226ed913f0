"""Stage `publish`: the detoxified policy as a folder ready for the Hugging Face Hub, with its model card.

    python stages/publish.py --compare metrics/compare --trained models/trained --train metrics/train \
        --out models/detoxified

publish.method names a methods entry (its adapter TRAINED/NAME, its train.json TRAIN/NAME), or `best`: the report's
answer (detoxkit.compare.answer_method: the lowest toxicity whose interval is below 0 with no guard crossed, or a
trained method that cannot be told from best-of-N when best-of-N is lowest; choose_published). Best-of-N has no
weights: when it is the answer, the best trained method that qualifies is published and the card says why; when no
trained method qualifies (none lowered toxicity, or none could be judged), nothing is published: the folder holds
only a README.md that says why, and the log says so in one line. Otherwise copies that method's adapter folder and
adds README.md in the Hub's model-card layout: YAML metadata (base_model, library_name: peft, tags), then what was
trained, on what, with which settings, and the headline metrics with their confidence intervals from the report
stage (detoxkit.card). The folder can be pushed as it is (`huggingface-cli upload <user>/<name> models/detoxified`).
"""
import argparse
import logging
import shutil
from pathlib import Path

from detoxkit.card import model_card, nothing_published
from detoxkit.compare import choose_published, smoke_note
from detoxkit.config import load_params
from detoxkit.errors import PipelineError
from detoxkit.io import atomic_dir, read_json, run_stage, write_text
from detoxkit.methods import listed, methods_of, trained_of
from detoxkit.models import read_policy_meta

log = logging.getLogger("detox.publish")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--compare", required=True, help="the report stage's comparison files (metrics/compare)")
    parser.add_argument("--trained", required=True, help="the training stages' adapter folders, NAME an entry")
    parser.add_argument("--train", required=True, help="the training stages' DVCLive folders (train.json)")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()

    params = load_params()
    names = [m.name for m in methods_of(params)]
    missing = [n for n in names if not (Path(args.compare) / f"{n}.json").is_file()]
    if missing:
        raise PipelineError(f"{args.compare}/{missing[0]}.json not found: the report stage has not run since "
                            f"methods.{missing[0]} was added; run `dvc repro`")
    entries = {n: read_json(Path(args.compare) / f"{n}.json") for n in names}
    method, why = choose_published(entries, params.publish.method)
    enabled = [m.name for m in trained_of(params) if m.enabled]  # what publish.method may name
    if method is None:  # publish.method best, and no trained method lowered toxicity: no adapter to stand behind
        with atomic_dir(args.out) as tmp:
            write_text(tmp / "README.md", nothing_published(why, smoke_note(entries), enabled))
        log.warning("publish.method is best, but %s: nothing published (%s/README.md says why); set publish.method to "
                    "%s to publish one anyway", why, args.out, listed(enabled))
        return
    policy, live = Path(args.trained) / method, Path(args.train) / method
    meta = read_policy_meta(policy)  # a clear error for a folder the training stage did not write
    train = read_json(live / "train.json")
    adapter = read_json(policy / "adapter_config.json")
    card = model_card(meta, adapter, entries[method], train, params.data.source, Path(args.out), why)
    with atomic_dir(args.out) as tmp:
        shutil.copytree(policy, tmp, dirs_exist_ok=True)
        write_text(tmp / "README.md", card)
    log.info("wrote %s: the %s adapter and its model card (README.md); %s", args.out, entries[method]["label"], why)


if __name__ == "__main__":
    run_stage(main)
