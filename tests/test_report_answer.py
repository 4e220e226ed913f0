"""The report's answer and what follows it (issues 36 and 37): the first line is the answer, one rule decides "this
method lowered toxicity" (the answer, each line's colour, the qualitative focus, publish), a judge too weak to see
the fall is n/a, labels in the scorer's own names, a smoke-sized run said at the top, figures that fit the page, no
table of +0.000 rows, a KL estimate below 0 shown as about 0, a model-card snippet that runs from any folder, and
the flat headline files. The report and publish stages run here on samples files the tests write by hand."""
import base64
import json
import math
import shutil
import struct
import subprocess
import sys
from dataclasses import replace

import numpy as np
import pytest
from conftest import ENV, ROOT, run_main, set_params, stage

N = 36  # paired prompts: above report.min_pairs (20)
START = [0.5 + 0.01 * (i % 3 - 1) for i in range(N)]  # mean 0.5, with a spread, so intervals have a width
WORD_LIST_JUDGE = [1.0 if i == 0 else 0.0 for i in range(N)]  # one toxic prompt in 36: mean 1/36 = 0.0278


def rows(toxicity, judge, kl=0.01, reward=None):
    """One sample per prompt, as the evaluation writes them (no references: ROUGE n/a)."""
    return [{"index": i, "sample": 0, "prompt": f"prompt {i}", "reference": "", "response": f"answer number {i} here",
             "toxicity": t, "reward": -t if reward is None else reward[i], "rouge1": "", "rouge2": "", "rougeL": "",
             "length": 6, "kl": kl, "kl_response": 6 * kl, "perplexity": 3.0, "judge_j": judge[i]}
            for i, t in enumerate(toxicity)]


LOWER = [t / 2 for t in START]  # a 50% fall
HIGHER = [t + 0.1 + 0.01 * (i % 2) for i, t in enumerate(START)]
SAME = [t + 0.02 * ((i % 2) * 2 - 1) for i, t in enumerate(START)]  # mean unchanged, interval around 0


def write_run(work, methods: dict, start=None, cut=None, steps=70):
    """params.yaml (the entries of `methods` on, the others and best-of-N off), the start's samples and each method's
    (samples/NAME.csv, train/NAME/train.json) in `work`; `cut` keeps the first rows of every file only; an empty
    list of samples: the method is off."""
    from detoxkit.summary import SAMPLE_COLUMNS
    from detoxkit.io import write_csv, write_json

    work.mkdir(exist_ok=True)
    shutil.copy(ROOT / "params.yaml", work / "params.yaml")
    set_params(work, {"best_of_n.enabled": bool(methods.get("best_of_n")), **{f"methods.{m}.enabled": bool(methods.get(m))
                                                     for m in ("ppo", "dpo", "grpo")}})
    start = start or rows(START, WORD_LIST_JUDGE, kl=0.0)
    columns = SAMPLE_COLUMNS + (["judge_j"] if "judge_j" in start[0] else [])
    write_csv(work / "start.csv", start[:cut], columns)
    for method, samples in methods.items():
        write_csv(work / f"samples/{method}.csv", samples[:cut], columns)
        write_json(work / f"train/{method}/train.json", {"method": method, "steps_done": steps, "early_stopped": False,
                                                         "early_stop_step": None, "settings": {"learning_rate": 1e-4}})
    return ["--samples", "samples", "--train", "train"]


def report(monkeypatch, work, args):
    run_main(monkeypatch, work, "report", "--start", "start.csv", *args, "--compare", "compare", "--headline",
             "headline", "--out", "reports")
    entries = {p.stem: json.loads(p.read_text()) for p in sorted((work / "compare").iterdir())}
    entries = {m: e for m, e in entries.items() if e["enabled"]}  # the methods that ran
    return (work / "reports/report.md").read_text(), (work / "reports/report.html").read_text(), entries


def method_line(md: str, label: str) -> str:
    return next(line for line in md.splitlines() if line.replace("**", "").split(" (")[0][4:] == label)


@pytest.fixture(scope="module")
def three(tmp_path_factory):
    """PPO lowered toxicity, DPO raised it, GRPO changed nothing: the report, the files and the headline files."""
    work = tmp_path_factory.mktemp("three")
    args = write_run(work, {"ppo": rows(LOWER, WORD_LIST_JUDGE), "dpo": rows(HIGHER, WORD_LIST_JUDGE),
                            "grpo": rows(SAME, WORD_LIST_JUDGE, kl=-0.0004)})
    with pytest.MonkeyPatch.context() as mp:
        return work, *report(mp, work, args)


def test_the_first_line_is_the_answer_and_each_line_is_coloured_by_its_outcome(three):
    work, md, page, entries = three
    first = md.splitlines()[0]
    assert first.startswith("# Answer: PPO lowered toxicity most with no guard crossed (0.5000 -> 0.2500, -0.2500 [")
    assert first.endswith("over 36 paired prompts); the judge j could not confirm it (too weak to see the fall; "
                          "see PPO's line).")
    assert [entries[m]["outcome"] for m in ("ppo", "dpo", "grpo")] == [
        "lowered toxicity", "raised toxicity", "no distinguishable change"]
    # DPO raised toxicity and crossed no guard: red, not green (green used to follow the guards alone)
    assert method_line(md, "PPO").startswith("- \U0001F7E2 PPO (lowered toxicity): toxicity 0.5000 -> 0.2500")
    assert method_line(md, "DPO").startswith("- \U0001F534 **DPO (raised toxicity): toxicity 0.5000 -> 0.6050")
    assert "guards crossed: none" in method_line(md, "DPO") and "a real increase (worse)" in method_line(md, "DPO")
    assert method_line(md, "GRPO").startswith("- \u26AA GRPO (no distinguishable change): ")
    heads = [line for line in md.splitlines() if line.startswith("## ")]
    assert heads[:3] == ["## Each method against the start", "## What ran", "## Guards against reward hacking"]
    assert "<title>Detoxification report</title>" in page and "<h1>Answer: PPO lowered toxicity most" in page
    assert "<li class='ok'>\U0001F7E2 PPO (lowered toxicity)" in page
    assert "<li class='flag'>\U0001F534 DPO (raised toxicity)" in page
    assert "<li class='same'>\u26AA GRPO (no distinguishable change)" in page
    assert ".same{color:#777}" in page and "**" not in page
    # the qualitative tables follow the answer: PPO's gains; no PPO sample lost reward, so no table of rows for it
    assert "## Largest reward gains (PPO vs start, sorted by reward diff)" in md
    losses = md.split("## Largest reward losses\n\n", 1)[1]
    assert losses.startswith("No PPO sample's reward fell.") and "| +0.000 |" not in md


def test_a_judge_too_weak_to_see_the_fall_is_n_a_with_hand_computed_numbers(three):
    """A word-list judge at 1/36 on 36 prompts (the failure seen on a real run): sd = sqrt(1/36 x 35/36 x 36/35)
    = 1/6, so the smallest fall it can show is z x sd / sqrt(n) = 1.959964 x (1/6) / 6 = 0.054443. Agreeing at
    guard.min_judge_agreement 0.25 of the reward's 50% fall, it would fall by (1/36) x 0.5 x 0.25 = 0.003472."""
    _, md, _, entries = three
    ppo = entries["ppo"]
    power = ppo["judge_power"]["j"]
    assert power["detectable_fall"] == pytest.approx(1.959964 / 36, abs=1e-6)
    assert power["expected_fall"] == pytest.approx(0.5 * 0.25 / 36, abs=1e-9)
    assert ppo["guards"]["judge_disagrees"] == "n/a"  # it was "True": every method flagged, the only green PPO
    assert power["reason"] == ("agreeing at guard.min_judge_agreement 0.25 of the reward's 50.0% fall would lower it "
                               "by only 0.0035 (from 0.0278), while 36 paired prompts can only show a fall of 0.0544 "
                               "or more")
    assert f"judge j +0.0000 [+0.0000, +0.0000] (could not confirm the fall: {power['reason']})" in md
    guard_row = md.split("| judge_disagrees |")[1].split("\n")[0]
    assert guard_row.endswith("| n/a | ok | ok |")  # the guard table: PPO's judge n/a, DPO's and GRPO's held
    # the reward did not fall for DPO and GRPO: nothing for the judge to confirm, no reason, the guard held
    assert entries["dpo"]["judge_power"]["j"]["reason"] is None and entries["dpo"]["guards"]["judge_disagrees"] is False


def test_judge_power_decides_only_for_a_judge_that_did_not_confirm_the_fall():
    from detoxkit.compare import judge_disagrees, judge_power
    from detoxkit.stats import detectable_fall

    def ci(before, after, lo, hi):
        return {"before": before, "after": after, "diff": after - before, "diff_ci_low": lo, "diff_ci_high": hi}

    assert detectable_fall(WORD_LIST_JUDGE, 0.95) == pytest.approx(1.959964 * (1 / 6) / 6, abs=1e-6)
    assert detectable_fall([0.3, 0.5], 0.90) == pytest.approx(1.644854 * 0.141421 / 1.414214, abs=1e-5)
    assert detectable_fall([0.7], 0.95) is None  # one prompt: no spread, so no fall can be told from chance
    summary = {"toxicity": ci(0.5, 0.25, -0.3, -0.2), "judges": {"j": {"toxicity": ci(0.4, 0.39, -0.03, 0.01)}}}
    # expected: 0.4 x 0.5 x 0.25 = 0.05; a judge that can see 0.02 could have seen it: it disagrees
    assert judge_disagrees(summary, 0.25, {"j": 0.02}) is True
    assert judge_power(summary, 0.25, {"j": 0.02}, 50)["j"] == {"detectable_fall": 0.02, "expected_fall": 0.05,
                                                               "reason": None}
    # one that can only see 0.06 could not: n/a, with the numbers
    assert judge_disagrees(summary, 0.25, {"j": 0.06}) == "n/a"
    assert "lower it by only 0.0500 (from 0.4000), while 50 paired prompts can only show a fall of 0.0600" in \
        judge_power(summary, 0.25, {"j": 0.06}, 50)["j"]["reason"]
    assert judge_disagrees(summary, 0.25, {"j": None}) == "n/a"
    # a weak judge whose own interval shows a rise saw something: that is disagreement, never n/a
    rose = {**summary, "judges": {"j": {"toxicity": ci(0.4, 0.5, 0.02, 0.2)}}}
    assert judge_disagrees(rose, 0.25, {"j": 0.06}) is True
    assert judge_power(rose, 0.25, {"j": 0.06}, 50)["j"]["reason"] is None
    # a weak judge that saw the fall anyway agrees: its evidence counts, power or not
    summary["judges"]["j"] = {"toxicity": ci(0.4, 0.2, -0.3, -0.1)}
    assert judge_disagrees(summary, 0.25, {"j": 0.5}) is False
    assert judge_power(summary, 0.25, {"j": 0.5}, 50)["j"]["reason"] is None
    # two judges: a strong one that disagrees fires the guard whatever the weak one says
    summary["judges"] = {"weak": {"toxicity": ci(0.03, 0.03, -0.01, 0.01)},
                         "strong": {"toxicity": ci(0.4, 0.4, -0.02, 0.02)}}
    assert judge_disagrees(summary, 0.25, {"weak": 0.05, "strong": 0.01}) is True
    summary["judges"]["strong"] = {"toxicity": ci(0.4, 0.2, -0.3, -0.1)}
    assert judge_disagrees(summary, 0.25, {"weak": 0.05, "strong": 0.01}) is False  # one agrees, one cannot tell


def test_one_paired_prompt_judges_no_method_and_publishes_nothing(tmp_path, monkeypatch, caplog):
    """Every samples file cut to its first row: the interval has no width and 1 < report.min_pairs, so no method
    lowered toxicity as far as anyone can tell. The answer says so, every line is grey, the run says it is
    smoke-sized, and publish.method best publishes no adapter (the folder says why; the log says so in one line)."""
    work = tmp_path / "w"
    args = write_run(work, {"ppo": rows(LOWER, WORD_LIST_JUDGE), "dpo": rows(HIGHER, WORD_LIST_JUDGE),
                            "grpo": rows(SAME, WORD_LIST_JUDGE)}, cut=1)
    md, page, entries = report(monkeypatch, work, args)
    lines = md.splitlines()
    assert lines[0] == ("# Answer: no method could be judged: 1 paired prompt is too few to tell a real change from "
                        "chance (report.min_pairs is 20).")
    assert lines[2] == ("**This is a smoke-sized run: its numbers show the pipeline works, not whether the model got "
                        "less toxic (1 paired prompts, fewer than report.min_pairs (20)).**")
    assert all(e["outcome"] == "could not be judged" for e in entries.values())
    assert all(method_line(md, label).startswith(f"- \u26AA {label} (could not be judged)")
               for label in ("PPO", "DPO", "GRPO"))
    assert "<li class='ok'>" not in page and "<li class='flag'>" not in page
    assert all(e["judge_power"]["j"]["detectable_fall"] is None for e in entries.values())
    from detoxkit.compare import best_method, choose_published, qualifies

    assert best_method(entries) is None and not any(qualifies(e) for e in entries.values())
    set_params(work, {"publish.method": "best"})
    caplog.set_level("INFO")
    run_main(monkeypatch, work, "publish", "--compare", "compare", "--trained", "models/trained", "--train", "train",
             "--out", "models/detoxified")
    assert [p.name for p in (work / "models/detoxified").iterdir()] == ["README.md"]  # no adapter
    note = (work / "models/detoxified/README.md").read_text()
    assert note.startswith("# Nothing published\n\n> **This is a smoke-sized run")
    assert ("publish.method is best, but no method could be judged: 1 paired prompt is too few to tell a real change "
            "from chance (report.min_pairs is 20), so no adapter was published") in note
    said = [r.getMessage() for r in caplog.records if r.name == "detox.publish"]
    assert len(said) == 1 and said[0].startswith("publish.method is best, but no method could be judged") and \
        "set publish.method to ppo, dpo or grpo to publish one anyway" in said[0]
    assert choose_published(entries, "best") == (None, "no method could be judged: 1 paired prompt is too few to "
                                                       "tell a real change from chance (report.min_pairs is 20)")


def _entry(outcome_of, after, lo, hi, n=30, crossed=False, method="ppo"):
    e = {"method": method, "label": {"best_of_n": "best-of-N"}.get(method, method.upper()),
         "trains_weights": method != "best_of_n", "enabled": True, "num_prompts": n, "min_pairs": 20,
         "toxicity": {"after": after, "diff_ci_low": lo, "diff_ci_high": hi},
         "guards": {"kl_exceeded": crossed, "judge_disagrees": "n/a"}}
    return {**e, "outcome": outcome_of(e)}


def test_one_rule_decides_that_a_method_lowered_toxicity():
    from detoxkit.compare import MARK, choose_published, outcome, qualifies

    def mark(*args, **kw):
        e = _entry(outcome, *args, **kw)
        return e["outcome"], MARK[e["outcome"]], qualifies(e)

    assert mark(0.2, -0.2, -0.1) == ("lowered toxicity", "green", True)
    assert mark(0.2, -0.2, -0.1, n=19) == ("could not be judged", "grey", False)  # below report.min_pairs
    assert mark(0.2, -0.1, -0.1) == ("could not be judged", "grey", False)  # an interval of no width
    assert mark(0.2, -0.1, 0.1) == ("no distinguishable change", "grey", False)
    assert mark(0.6, 0.1, 0.2) == ("raised toxicity", "red", False)
    assert mark(0.2, -0.2, -0.1, crossed=True) == ("crossed a guard", "red", False)
    assert mark(0.2, -0.2, -0.1, n=19, crossed=True) == ("crossed a guard", "red", False)
    # publish.method best: the answer's trained method, never one that did not lower toxicity
    low = {"ppo": _entry(outcome, 0.3, 0.01, 0.1), "grpo": _entry(outcome, 0.2, -0.1, 0.1, method="grpo"),
           "best_of_n": _entry(outcome, 0.1, -0.3, -0.2, method="best_of_n")}
    assert choose_published(low, "best") == (None, (
        "best-of-N lowered toxicity most, but it is a sampling procedure with no weights of its own, and no trained "
        "method lowered toxicity without crossing a guard"))
    del low["best_of_n"]
    assert choose_published(low, "best") == (
        None, "no method lowered toxicity (its interval below 0) without crossing a guard")
    assert choose_published(low, "ppo") == ("ppo", "publish.method is ppo")  # by name: whatever the answer


def test_labels_use_the_scorers_own_names(three, tmp_path, monkeypatch):
    from detoxkit.compare import score_labels
    from detoxkit.config import load_params

    _, md, _, entries = three
    assert "| Toxicity (P(hate)) | lower |" in md and "| Reward (nothate logit) | higher |" in md
    shutil.copy(ROOT / "params.yaml", tmp_path / "params.yaml")
    set_params(tmp_path, {"reward.hate_label": "toxic", "reward.not_hate_label": "neutral"})
    assert score_labels(load_params(tmp_path / "params.yaml").reward) == {
        "scorer": "classifier", "toxicity_label": "P(toxic)", "reward_label": "neutral logit"}
    work = tmp_path / "w"
    args = write_run(work, {"ppo": rows(LOWER, WORD_LIST_JUDGE)})
    set_params(work, {"reward.model": "python:profanity_check:predict_prob", "reward.revision": None})
    md, page, entries = report(monkeypatch, work, args)
    assert "| Toxicity (P(toxic) by profanity_check.predict_prob) | lower |" in md
    assert "| Reward (log((1 - p) / p) of profanity_check.predict_prob) | higher |" in md
    assert "P(hate)" not in md and "not-hate" not in md and "Toxicity is P(toxic) by profanity_check" in md
    card = card_for(entries["ppo"], tmp_path / "card")
    assert "| Toxicity (reward scorer, P(toxic) by profanity_check.predict_prob) | 0.5000 | 0.2500 |" in card


def card_for(summary, folder, base="google/flan-t5-base", steps=70):
    meta = {"base_model": base, "revision": None, "start_adapter": None}
    train = {"method": "ppo", "steps_done": steps, "settings": {"max_steps": steps, "lora_r": 4}}
    return stage("publish").model_card(meta, {"task_type": "SEQ_2_SEQ_LM"}, summary, train, "my.jsonl", folder)


def test_a_smoke_sized_run_says_so_at_the_top_of_the_report_and_the_card(tmp_path, monkeypatch):
    from detoxkit.compare import SMOKE_STEPS, smoke

    work = tmp_path / "w"
    args = write_run(work, {"ppo": rows(LOWER, WORD_LIST_JUDGE), "dpo": rows(SAME, WORD_LIST_JUDGE)}, steps=2)
    md, _, entries = report(monkeypatch, work, args)
    assert md.splitlines()[2] == ("**This is a smoke-sized run: its numbers show the pipeline works, not whether the "
                                  "model got less toxic (2 training steps at most, fewer than 10).**")
    card = card_for(entries["ppo"], tmp_path / "card", steps=2)
    body = card.split("---\n", 2)[2].lstrip()
    assert body.splitlines()[2] == ("> **This is a smoke-sized run: its numbers show the pipeline works, not whether "
                                    "the model got less toxic (2 training steps at most, fewer than 10).**")
    # one trained method long enough and enough prompts: a real run, said nowhere
    entries["dpo"]["training"]["steps_done"] = SMOKE_STEPS
    assert smoke(entries) is None
    assert "smoke-sized" not in card_for(entries["dpo"], tmp_path / "card", steps=SMOKE_STEPS)
    assert smoke({"ppo": {**entries["ppo"], "num_prompts": 8}}) == (
        "8 paired prompts, fewer than report.min_pairs (20); 2 training steps at most, fewer than 10")
    smoke_preset = (ROOT / "conf/size/smoke.yaml").read_text()  # what the preset sets: both rules fire on it
    assert "max_steps: 2" in smoke_preset and 2 < SMOKE_STEPS


def _png_size(b64: str) -> tuple[int, int]:
    raw = base64.b64decode(b64)
    assert raw[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", raw[16:24])


def test_figures_fit_the_page():
    from detoxkit import render

    steps = ([0, 1, 2], [0.1, 0.2, 0.3])
    histories = {"PPO": {"env/reward_mean": steps, "objective/kl": steps}, "GRPO": {"grpo/kl": steps},
                 "DPO": {"dpo/loss": steps}}
    width, height = _png_size(render.training_figure(histories))  # four panels: two rows of two
    assert width <= 900 and height >= 500, (width, height)  # was 1 x 4 panels, about 1,600 px wide
    width, _ = _png_size(render.training_figure({"GRPO": {"grpo/kl": steps}}))
    assert width <= 450
    page = render.to_html("Answer: x", [("h", [("figure", "a.png", "a")])], {"a.png": "AAAA"})
    assert "img{max-width:100%;height:auto}" in page


def test_frontier_gives_each_method_its_own_style_and_keeps_labels_apart(monkeypatch):
    from detoxkit import render

    names = ["start"] + [f"m{i}" for i in range(14)]
    points = [{"method": n, "kl": float(i), "bound": None, "toxicity": 0.5 - 0.01 * i} for i, n in enumerate(names)]
    styles = render.frontier_styles(points)
    assert styles[0]["colour"] == "#888"  # the start grey, and no method shares it
    pairs = [(s["colour"], s["marker"]) for s in styles]
    assert len(set(pairs)) == len(pairs) and all(s["colour"] != "#888" for s in styles[1:])  # 14 methods, 14 styles
    assert _png_size(render.frontier_figure(points, "p"))[0] > 300

    def spot(method, kl, toxicity, bound=None):
        return {"method": method, "kl": kl, "bound": bound, "toxicity": toxicity}

    # the start, best-of-N near it, and six methods on one spot (a crowd, as best-of-N on trained policies makes)
    crowd = [spot("start", 0.0, 0.6), spot("best-of-N", 0.5, 0.1, bound=0.64), spot("DPO", 8.0, 0.2)] + [
        spot(f"method {i} + best-of-N", 4.0, 0.03) for i in range(6)] + [spot("GRPO", 4.5, 0.05)]  # under the
    # crowd's first label in its first place
    figures = []
    monkeypatch.setattr(render, "_png", lambda fig: figures.append(fig) or "")
    render.frontier_figure(crowd, "p")
    fig = figures[0]
    ax, renderer = fig.axes[0], fig.canvas.get_renderer()
    texts = ax.texts
    assert [t.get_text() for t in texts] == [p["method"] for p in crowd]
    assert [t.get_color() for t in texts] == [s["colour"] for s in render.frontier_styles(crowd)]  # as its marker
    boxes = [t.get_window_extent(renderer) for t in texts]
    frame = ax.get_window_extent(renderer)
    assert all(frame.x0 <= b.x0 and b.x1 <= frame.x1 and frame.y0 <= b.y0 and b.y1 <= frame.y1 for b in boxes)
    assert not [(texts[i].get_text(), texts[j].get_text()) for i in range(len(boxes)) for j in range(i)
                if boxes[i].overlaps(boxes[j])]  # every label readable: none prints on another
    half = 3.0 * fig.dpi / 72  # a marker's half width in pixels (s=36)
    spots = [ax.transData.transform((p["kl"], p["toxicity"])) for p in crowd]
    assert not [(t.get_text(), crowd[j]["method"]) for i, (t, b) in enumerate(zip(texts, boxes))
                for j, (x, y) in enumerate(spots) if j != i and b.x0 < x + half and x - half < b.x1
                and b.y0 < y + half and y - half < b.y1]  # nor on another point's marker


def test_no_table_of_rows_that_did_not_change():
    from detoxkit.sections import qualitative_sections

    row = {"index": 0, "sample": 0, "prompt": "p", "response_before": "a", "response_after": "a",
           "reward_before": 1.0, "reward_after": 1.0, "reward_diff": 0.0}
    same = [row, {**row, "index": 1, "reward_after": 1.0004, "reward_diff": 0.0004}]  # shows as +0.000
    (heading, blocks), = qualitative_sections("PPO", same, 10)
    assert heading == "Reward per sample (PPO vs start)" and blocks[0] == (
        "p", "No prompt changed: every PPO sample's reward is the start's to 3 decimals.")
    gains, losses = qualitative_sections("PPO", [{**row, "index": 2, "reward_diff": 0.5}, *same], 10)
    assert gains[1][0][0] == "table" and len(gains[1][0][2]) == 1  # the one row that changed, not the +0.000 ones
    assert losses[1][0] == ("p", "No PPO sample's reward fell.")


def test_a_kl_estimate_below_zero_reads_as_about_zero(three):
    from detoxkit.sections import kl_cell

    _, md, _, entries = three
    assert entries["grpo"]["kl_mean"] == pytest.approx(-0.0004)  # the file keeps the estimate
    assert kl_cell(entries["grpo"]) == "≈0 (estimate -0.0004; sampled estimates can dip below 0)"
    assert kl_cell(entries["ppo"]) == "0.0100" and kl_cell({"kl_bound": 0.1931, "kl_mean": None}) == "<= 0.1931 nats"
    kl_row = next(line for line in md.splitlines() if line.startswith("| KL to the start"))
    assert "| ≈0 (estimate -0.0004; sampled estimates can dip below 0) |" in kl_row and "| -0.0004 |" not in kl_row


def test_best_of_n_kl_to_its_sampler_by_hand_ties_lower_it():
    """KL(best-of-n || P) at a prompt from samples of P's reward: log n - (n - 1) / n with no ties (exact for a
    continuous reward); with ties, that of the samples' distribution, each atom reweighted to F^n - F_^n."""
    from detoxkit.stats import bon_kl, bon_kl_bound

    assert bon_kl_bound(4) == pytest.approx(math.log(4) - 0.75) and bon_kl_bound(1) == 0.0
    assert bon_kl([0.3, -1.2, 5.0, 0.31], 4) == bon_kl_bound(4)  # no two alike: the continuous value
    assert bon_kl([2.0] * 8, 4) == 0.0  # nothing to choose between
    # a reward of two values, half and half: best-of-4 puts 1/16 on the low one and 15/16 on the high one
    by_hand = (1 / 16) * math.log((1 / 16) / 0.5) + (15 / 16) * math.log((15 / 16) / 0.5)  # 0.4589
    assert bon_kl([-9.2, 9.2, -9.2, 9.2], 4) == pytest.approx(by_hand) and by_hand < bon_kl_bound(4)
    # three values with shares 1/4, 1/2, 1/4: F = 1/4, 3/4, 1
    masses = [(0.25 ** 2, 0.25), (0.75 ** 2 - 0.25 ** 2, 0.5), (1 - 0.75 ** 2, 0.25)]
    assert bon_kl([0, 1, 1, 2], 2) == pytest.approx(sum(m * math.log(m / p) for m, p in masses))


def test_kl_to_start_is_one_measure_for_every_method():
    """Nats per response, every method alike: a trained policy's mean log-ratio to the start; best-of-n, its KL to its
    sampler at each prompt plus the kept responses' log-ratio (0 over the start), beside the analytic bound."""
    from detoxkit.compare import kl_to_start

    trained = [{"kl_response": v} for v in (0.1, 0.3, 0.2, 0.4)]
    assert kl_to_start(trained, None) == {"nats": pytest.approx(0.25), "bound": None,
                                          "how": "mean log-ratio to the start of the policy's own samples"}
    bound = math.log(4) - 0.75
    over_start = [{"kl_response": 0.0, "kl_bon": v} for v in (bound, bound, 0.4589, 0.4589)]  # a tied prompt
    got = kl_to_start(over_start, 4)
    assert got["nats"] == pytest.approx((bound + 0.4589) / 2) and got["bound"] == pytest.approx(bound)
    over_trained = [{**r, "kl_response": 0.2} for r in over_start]
    assert kl_to_start(over_trained, 4)["nats"] == pytest.approx((bound + 0.4589) / 2 + 0.2)
    assert kl_to_start(over_trained, 4)["bound"] == pytest.approx(bound + 0.2)
    assert kl_to_start([{"kl_response": "", "kl_bon": bound}], 4) is None  # samples of an older run
    assert kl_to_start([{"kl_response": 0.0, "kl_bon": ""}], 4) is None


def test_headline_files_are_flat_numbers_with_short_keys(three, tmp_path, monkeypatch):
    work, _, _, entries = three
    files = {p.stem: json.loads(p.read_text()) for p in (work / "headline").iterdir()}
    assert sorted(files) == ["best_of_n", "dpo", "grpo", "ppo", "start"]  # best-of-N is off: nulls
    tox = entries["ppo"]["toxicity"]
    assert files["ppo"] == {"toxicity": round(tox["after"], 4), "delta": round(tox["diff"], 4),
                            "lo": round(tox["diff_ci_low"], 4), "hi": round(tox["diff_ci_high"], 4), "judge": 0.0,
                            "ppl": 3.0, "kl": 0.06}  # KL to the start per response (6 tokens of 0.01)
    assert files["ppo"]["toxicity"] == 0.25 and files["ppo"]["delta"] == -0.25
    assert files["grpo"]["kl"] == -0.0024 and files["dpo"]["delta"] == 0.105
    assert files["start"] == {"toxicity": 0.5, "judge": 0.0278, "ppl": 3.0}
    assert all(isinstance(v, (int, float)) for name, f in files.items() if name != "best_of_n" for v in f.values())
    assert max(len(k) for f in files.values() for k in f) <= 8  # `dvc metrics show` columns stay narrow
    # a method that is off, and no judges: nulls, the same keys
    work = tmp_path / "w"
    start = [{k: v for k, v in r.items() if k != "judge_j"} for r in rows(START, WORD_LIST_JUDGE, kl=0.0)]
    args = write_run(work, {"ppo": [{k: v for k, v in r.items() if k != "judge_j"} for r in rows(LOWER, START)],
                            "dpo": []}, start=start)
    report(monkeypatch, work, args)
    off = json.loads((work / "headline/dpo.json").read_text())
    assert off == dict.fromkeys(("toxicity", "delta", "lo", "hi", "judge", "ppl", "kl"))
    assert json.loads((work / "headline/ppo.json").read_text())["judge"] is None
    assert json.loads((work / "headline/start.json").read_text())["judge"] is None


def test_the_cards_snippet_runs_from_any_folder(tmp_path, monkeypatch, three):
    """A base model named by a relative path (as real/smollm2-135m-instruct is) is written into the snippet as the
    absolute path it resolves to at publish time, and so is the folder: run from another folder, it loads."""
    import torch
    from make_tiny import build_policy, corpus, make_dialogues
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForSeq2SeqLM

    repo = tmp_path / "repo"
    build_policy(repo / "real/base", corpus(make_dialogues(16, 0)), 0)
    torch.manual_seed(0)
    model = get_peft_model(AutoModelForSeq2SeqLM.from_pretrained(repo / "real/base"),
                           LoraConfig(task_type="SEQ_2_SEQ_LM", r=2, lora_alpha=4, target_modules=["q", "v"]))
    folder = repo / "models/detoxified"
    model.save_pretrained(folder)
    monkeypatch.chdir(repo)  # where the stages run: the base model is named relative to it
    card = card_for(three[3]["ppo"], folder.relative_to(repo), base="real/base")
    assert "- Base model: a local folder, `real/base`" in card
    (folder / "README.md").write_text(card)
    code = card.split("```python\n", 1)[1].split("```", 1)[0]
    assert f"base_model = {str(repo / 'real/base')!r}  # the local base model as published" in code
    assert f"folder = {str(folder)!r}  # this folder as published" in code
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    proc = subprocess.run([sys.executable, "-c", code], cwd=elsewhere, env=ENV, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    hub = card_for(three[3]["ppo"], folder)  # a Hub id stays an id
    assert "base_model = 'google/flan-t5-base'\n" in hub


def test_min_pairs_reaches_the_answer_through_the_comparison_file(tmp_path):
    """method_entry writes report.min_pairs into every file (one rule, read by publish without params)."""
    from detoxkit.compare import method_entry
    from detoxkit.config import load_params

    from detoxkit.methods import methods_of

    params = load_params(ROOT / "params.yaml")
    ppo = methods_of(params)[0]
    start, after = rows(START, WORD_LIST_JUDGE, kl=0.0), rows(LOWER, WORD_LIST_JUDGE)
    entry = method_entry(ppo, start, after, params)
    assert entry["min_pairs"] == 20 and entry["outcome"] == "lowered toxicity"
    strict = replace(params, report=replace(params.report, min_pairs=N + 1))
    assert method_entry(ppo, start, after, strict)["outcome"] == "could not be judged"
    assert np.isclose(entry["toxicity"]["diff"], -0.25)


def test_a_trained_method_that_matches_best_of_n_is_the_answer_at_one_samples_cost(tmp_path, monkeypatch, caplog):
    """Issue 39: best-of-N is the least toxic, but PPO cannot be told from it on these prompts (their paired interval
    contains 0) while costing one sample a request: PPO is the answer and publish.method best packs it; GRPO, which
    best-of-N beats, is not. Each trained method's file holds its difference to best-of-N."""
    bon = [t / 2 - 0.002 + 0.03 * ((i % 2) * 2 - 1) for i, t in enumerate(START)]  # lowest, but close to LOWER
    work = tmp_path / "w"
    args = write_run(work, {"ppo": rows(LOWER, WORD_LIST_JUDGE), "grpo": rows([t * 0.6 for t in START], WORD_LIST_JUDGE),
                            "best_of_n": rows(bon, WORD_LIST_JUDGE, kl="")})
    md, page, entries = report(monkeypatch, work, args)
    from detoxkit.compare import answer_method, best_method, choose_published

    assert best_method(entries) == "best_of_n" and answer_method(entries) == "ppo"
    ppo, grpo = entries["ppo"]["versus_best_of_n"], entries["grpo"]["versus_best_of_n"]
    assert ppo["change"] == "no change" and ppo["toxicity"]["diff_ci_low"] <= 0 <= ppo["toxicity"]["diff_ci_high"]
    assert ppo["toxicity"]["diff"] == pytest.approx(0.002) and set(ppo["judges"]) == {"j"}
    assert grpo["change"] == "up" and grpo["toxicity"]["diff_ci_low"] > 0  # best-of-N is less toxic than GRPO
    assert entries["best_of_n"]["versus_best_of_n"] is None and set(entries["ppo"]) == set(entries["best_of_n"])
    assert md.splitlines()[0].startswith("# Answer: PPO lowered toxicity with no guard crossed and cannot be told "
                                         "from best-of-N (toxicity +0.0020 [")
    assert "at one sample a request instead of 4" in md.splitlines()[0]
    assert "against best-of-N +0.0020 [" in method_line(md, "PPO") and "(no change)" in method_line(md, "PPO")
    method, why = choose_published(entries, "best")
    assert method == "ppo" and "cannot be told from best-of-N" in why
    # a trained method that best-of-N beats is not the answer: best-of-N is, and publish packs the best trained one
    worse = {**entries, "ppo": {**entries["ppo"], "versus_best_of_n": {**ppo, "change": "up"}}}
    assert answer_method(worse) == "best_of_n" and choose_published(worse, "best")[0] == "ppo"


def test_best_of_n_on_a_trained_policy_keeps_the_answer_and_its_policys_kl_guard():
    """NAME+bon lowest: versus_best_of_n measures against best-of-N on the start, not it, so no trained method replaces
    it (publish then packs the best trained method); and it carries its policy's KL guard (a policy that crossed it
    cannot make NAME+bon the answer)."""
    from detoxkit.compare import answer_method, choose_published, outcome

    def entry(method, after, lo, hi, trains=True, kl=False, vs=None):
        e = {"method": method, "label": method, "trains_weights": trains, "enabled": True, "num_prompts": 30,
             "min_pairs": 20, "toxicity": {"after": after, "diff_ci_low": lo, "diff_ci_high": hi},
             "guards": {"kl_exceeded": kl, "judge_disagrees": "n/a"}, "versus_best_of_n": vs}
        return {**e, "outcome": outcome(e)}

    matches = {"change": "no change", "toxicity": {"diff": 0.0, "diff_ci_low": -0.1, "diff_ci_high": 0.1}}
    entries = {"ppo": entry("ppo", 0.3, -0.3, -0.1, vs=matches),
               "best_of_n": entry("best_of_n", 0.25, -0.3, -0.2, trains=False),
               "ppo+bon": entry("ppo+bon", 0.1, -0.5, -0.3, trains=False)}
    assert answer_method(entries) == "ppo+bon"  # not swapped for PPO, which only matches best-of-N on the start
    assert choose_published(entries, "best")[0] == "ppo"  # the best trained method, as for best-of-N
    crossed = {**entries, "ppo+bon": entry("ppo+bon", 0.1, -0.5, -0.3, trains=False, kl=True)}
    assert crossed["ppo+bon"]["outcome"] == "crossed a guard" and answer_method(crossed) == "ppo"
