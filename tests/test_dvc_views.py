"""What a person reads of a run through DVC: `dvc metrics show`/`diff` and the documented `dvc exp show` one-liner fit
120 columns, `dvc plots show` draws offline with the methods side by side first (one colour a method), a fresh clone
says nothing about missing hashes, and the pages the tools write are git-ignored.

Cheap on purpose: a git + DVC repository with the project's dvc.yaml, whose headline metrics and plotted files are
written by hand in the shapes the stages write (every other output a placeholder) and recorded with `dvc commit` (no
pipeline run; a tiny run's plots are checked in tests/test_pipeline.py). The drawing test needs Chromium (skipped
without it)."""
import hashlib
import json
import os
import random
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import ENTRIES, ENV, ROOT, dvc, make_repo, sh
from detoxkit.io import load_script

plots_template = load_script(ROOT / "tools" / "plots_template.py")
METHODS = ["start", *ENTRIES, "best_of_n"]  # start, ppo, dpo, grpo, best_of_n: the report's order
TRAINED = METHODS[1:]
LABELS = ["start", "PPO", "DPO", "GRPO", "best-of-N"]  # as the report's long-form plot files name them
WIDE = {**ENV, "COLUMNS": "120"}  # a terminal 120 columns wide
COMPARISONS = ["Toxicity per method (samples per toxicity bin)", "Maximum toxicity per prompt (over its k samples)",
               "Toxicity per sample"]


def expanded(spec: dict) -> list[dict]:
    """dvc.yaml's stages, a `foreach` template over params.yaml's methods expanded to one stage an entry (as DVC
    does)."""
    entries = yaml.safe_load((ROOT / "params.yaml").read_text())["methods"]
    out = []
    for stage in spec["stages"].values():
        if "foreach" not in stage:
            out.append(stage)
            continue
        assert stage["foreach"] == "${methods}"
        out += [json.loads(json.dumps(stage["do"]).replace("${key}", key).replace("${item.algorithm}", e["algorithm"]))
                for key, e in entries.items()]
    return out


def stage_paths(entries) -> list[str]:
    """Paths of a dvc.yaml list of outputs or dependencies (a path, or {path: options})."""
    return [next(iter(e)) if isinstance(e, dict) else e for e in entries or []]


def headline(seed: int) -> dict[str, dict]:
    """The five files the report stage writes to metrics/headline (detoxkit.compare.headline): start and one a
    method, flat, 4 decimals or null; a method's judge is its change from the start's."""
    rng = random.Random(seed)
    start = {"toxicity": rng.uniform(0.15, 0.3), "judge": rng.uniform(0.05, 0.2), "ppl": rng.uniform(40, 90)}
    files = {"start": start}
    for method in TRAINED:
        delta = -rng.uniform(0.01, 0.12)
        files[method] = {"toxicity": start["toxicity"] + delta, "delta": delta, "lo": delta - 0.031,
                         "hi": delta + 0.029, "judge": -rng.uniform(0, 0.1), "ppl": rng.uniform(40, 90),
                         "kl": rng.uniform(0.001, 0.7)}  # nats per response, best-of-N's too
    return {name: {k: None if v is None else round(v, 4) for k, v in values.items()} for name, values in files.items()}


def write_headline(repo: Path, seed: int):
    for name, values in headline(seed).items():
        path = repo / "metrics/headline" / f"{name}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(values, indent=2))


def plot_sources(spec: dict) -> dict[str, tuple[str, set]]:
    """{file (from the repository's root): (x, its y columns)} of plots/dvc.yaml's plots (paths from plots/)."""
    files: dict[str, tuple[str, set]] = {}
    for entry in spec["plots"]:
        (plot_id, props), = entry.items()
        ys = props.get("y") or {plot_id: Path(plot_id).stem}  # a file's own plot: its value column
        for path, fields in ys.items():
            path = os.path.normpath(Path("plots") / path)
            files.setdefault(path, (props["x"], set()))[1].update([fields] if isinstance(fields, str) else fields)
    return files


def write_plot_data(repo: Path, spec: dict):
    """Every plotted file, in the shape its writer gives it (the report's long form: a row a point, its method and
    its order; a DVCLive TSV per curve)."""
    rng = random.Random(0)
    for path, (x, fields) in plot_sources(spec).items():
        sep = "\t" if path.endswith(".tsv") else ","
        long = path.startswith("reports/plots/")
        rows = [sep.join([x, *sorted(fields), *(["method", "order"] if long else [])])]
        for order, method in enumerate(LABELS if long else [None]):
            for i in range(8):
                for _ in range(2 if x == "index" else 1):  # samples: k = 2 a prompt
                    rows.append(sep.join([str(i), *(f"{rng.random():.6f}" for _ in fields),
                                          *([method, str(order)] if long else [])]))
        (repo / path).parent.mkdir(parents=True, exist_ok=True)
        (repo / path).write_text("\n".join(rows) + "\n")


def record_run(repo: Path, spec: dict):
    """Every other stage input and output as a placeholder, then `dvc commit`: dvc.lock holds them all, as after a
    run (`dvc exp save` needs every output)."""
    paths = [path for stage in expanded(spec)
             for path in stage_paths(stage.get("deps")) + stage_paths(stage.get("outs"))]
    for path in paths:
        target = repo / path
        if not target.exists():
            if target.suffix:
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_text("{}\n" if target.suffix == ".json" else "placeholder\n")
            else:
                target.mkdir(parents=True)
                (target / "placeholder.txt").write_text("placeholder\n")
    dvc("commit", "-f", cwd=repo)


@pytest.fixture(scope="module")
def views(tmp_path_factory):
    """The project (dvc.yaml, .dvc/plots and its plots config) with a recorded run: HEAD~1 has no run (a fresh
    clone), HEAD has one, and the workspace holds a later run's headline (what `dvc metrics diff` compares)."""
    repo = make_repo(tmp_path_factory.mktemp("views") / "repo", {})  # with .dvc/plots and its config, as here
    assert dvc("config", "plots.html_template", cwd=repo).stdout == dvc("config", "plots.html_template", cwd=ROOT).stdout
    spec = yaml.safe_load((repo / "dvc.yaml").read_text())
    write_plot_data(repo, yaml.safe_load((repo / "plots/dvc.yaml").read_text()))
    write_headline(repo, seed=1)
    record_run(repo, spec)
    sh("git", "add", "-A", cwd=repo)
    sh("git", "commit", "-qm", "run", cwd=repo)
    write_headline(repo, seed=2)  # a second run's numbers, not yet committed
    dvc("commit", "-f", cwd=repo)
    return repo


def wide(*args, cwd) -> subprocess.CompletedProcess:
    """`dvc args` in a terminal 120 columns wide; on failure show its output."""
    proc = subprocess.run([sys.executable, "-m", "dvc", *args], cwd=cwd, env=WIDE, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


def lines(proc) -> list[str]:
    return (proc.stdout + proc.stderr).splitlines()


def check_width(proc, limit=120):
    too_wide = [line for line in lines(proc) if len(line) > limit]
    assert not too_wide, "\n".join(lines(proc))


# --- 1. metrics ----------------------------------------------------------------------------------------------------
def test_only_the_headline_folder_is_declared_metrics():
    """One flat file a method (and start.json) in metrics/headline, which the report writes whole: a methods entry
    added to params.yaml appears in `dvc metrics show` with no edit to dvc.yaml."""
    spec = yaml.safe_load((ROOT / "dvc.yaml").read_text())
    declared = stage_paths(spec.get("metrics"))
    for stage in expanded(spec):
        declared += stage_paths(stage.get("metrics"))
    assert declared == ["metrics/headline"]


def test_metrics_show_and_diff_fit_120_columns(views):
    show = wide("metrics", "show", cwd=views)
    check_width(show)
    header, *rows = lines(show)
    assert header.split() == ["Path", "delta", "hi", "judge", "kl", "lo", "ppl", "toxicity"], show.stdout
    assert sorted(row.split()[0] for row in rows) == sorted(f"metrics/headline/{m}.json" for m in METHODS)
    diff = wide("metrics", "diff", cwd=views)  # HEAD's run against the workspace's
    check_width(diff)
    assert lines(diff)[0].split() == ["Path", "Metric", "HEAD", "workspace", "Change"], diff.stdout
    assert any(line.startswith("metrics/headline/ppo.json") and " toxicity " in line for line in lines(diff))
    # the full comparison: any JSON output, by name (docs/dvc.md)
    compare = views / "metrics/compare/ppo.json"
    compare.write_text(json.dumps({"after": {"toxicity_mean": 0.125}, "guards": {"kl": False}}))
    named = wide("metrics", "show", "metrics/compare/ppo.json", cwd=views)
    assert "after.toxicity_mean" in named.stdout and "0.125" in named.stdout, named.stdout


def test_a_fresh_clone_is_quiet_metrics_diff_says_one_line(views, tmp_path):
    clone = tmp_path / "clone"
    sh("git", "clone", "-q", views, clone, cwd=tmp_path)
    sh("git", "checkout", "-q", "HEAD~1", cwd=clone)  # the project before any run: no dvc.lock, no outputs
    diff = wide("metrics", "diff", cwd=clone)
    check_width(diff)
    assert len(lines(diff)) <= 2, lines(diff)  # "DVC failed to load some metrics for ... 'HEAD, workspace'"
    status = wide("status", cwd=clone)
    assert "WARNING" not in status.stdout + status.stderr and "changed outs" in status.stdout, status.stderr
    # DVC's dry run stops at the first stage whose input an earlier stage would write (it hashes inputs that are not
    # there yet: exit 255), after the same quiet start
    dry = subprocess.run([sys.executable, "-m", "dvc", "repro", "--dry"], cwd=clone, env=WIDE, capture_output=True,
                         text=True, timeout=300)
    assert "Running stage 'lineage'" in dry.stdout and "WARNING" not in dry.stdout + dry.stderr, dry.stderr


# --- 2. experiments ------------------------------------------------------------------------------------------------
def test_the_documented_exp_show_one_liner_fits_120_columns(views, tmp_path):
    repo = shutil.copytree(views, tmp_path / "repo", symlinks=True)
    dvc("exp", "save", "-n", "tuned", cwd=repo)  # the workspace's second run, as an experiment
    if not shutil.which("column"):
        pytest.skip("the one-liner aligns with column(1) (util-linux or bsdextrautils), not installed here")
    docs = (ROOT / "docs/dvc.md").read_text()
    one_liner = next(line for line in docs.splitlines() if line.startswith("for k in toxicity"))
    proc = subprocess.run(["bash", "-c", one_liner], cwd=repo, env=WIDE, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    check_width(proc)
    tables = [t.splitlines() for t in proc.stdout.strip().split("\n\n")]
    tuned = headline(seed=2)
    # a column a file of the metrics/headline folder, as DVC lists a folder's files: by name
    assert [t[0].split() for t in tables] == [[k, "rev", *sorted(m for m in METHODS if tuned[m].get(k) is not None)]
                                              for k in ("toxicity", "judge", "ppl", "kl")], proc.stdout
    row = next(line.split() for line in tables[0] if line.startswith("tuned"))
    at = tables[0][0].split().index("ppo")  # under its header: tuned, its commit, then a value a column
    assert row[at] == f"{tuned['ppo']['toxicity']:.3g}", tables[0]
    assert [line.split()[0] for line in tables[0][1:]] == ["workspace", "main", "tuned"], tables[0]


# --- 3 and 4. plots ------------------------------------------------------------------------------------------------
def chromium() -> str:
    found = next((shutil.which(name) for name in ("chromium", "chromium-browser", "google-chrome")
                  if shutil.which(name)), None)
    if not found:
        pytest.skip("no Chromium to draw the page (apt-get install chromium)")
    return found


def draw(page: Path, tmp_path: Path) -> str:
    """The page's DOM after its scripts ran, in headless Chromium with every network name unresolvable."""
    out = tmp_path / f"profile-{page.stem}"
    cmd = [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           "--host-resolver-rules=MAP * ~NOTFOUND", "--proxy-server=127.0.0.1:9", f"--user-data-dir={out}",
           "--virtual-time-budget=10000", "--hide-scrollbars", "--window-size=1300,2400"]
    proc = subprocess.run([*cmd, "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120)
    return proc.stdout


def test_plots_put_the_methods_first_each_in_its_colour_with_every_method(views):
    shown = json.loads(dvc("plots", "show", "--json", cwd=views).stdout)
    assert not shown.get("errors"), shown["errors"]
    names = list(shown["data"])
    assert names[:3] == COMPARISONS and len(names) <= 12, names  # then the training curves
    for name in names[:5]:  # the methods side by side: coloured by method, the same colour a method everywhere
        spec = shown["data"][name][0]["content"]
        assert spec["encoding"]["color"]["field"] == "method", name
        assert spec["encoding"]["color"]["scale"] == {"range": plots_template.PALETTE}, name
        assert spec["encoding"]["color"]["sort"] == {"field": "order", "op": "min"}, name  # the report's order
        assert spec["transform"] == [{"calculate": "datum.method", "as": "method"}], name
        by_revision = spec["encoding"].get("strokeDash") or spec["encoding"]["shape"]  # dashes, or shapes of points
        assert by_revision["field"] == "rev", name
    per_sample = shown["data"]["Toxicity per sample"][0]["content"]["data"]["values"]
    assert sorted({(v["method"], int(v["order"])) for v in per_sample}, key=lambda m: m[1]) == list(
        zip(LABELS, range(5)))  # every method's samples, each with its place (its colour)


def test_plots_show_draws_offline_with_one_legend_entry_a_method(views, tmp_path):
    out = tmp_path / "plots"
    dvc("plots", "show", "-o", out, cwd=views)  # plain `dvc plots show`: .dvc/config names the page
    page = out / "index.html"
    html = page.read_text()
    assert "cdn.jsdelivr" not in html and 'src="http' not in html
    count = len(json.loads(dvc("plots", "show", "--json", cwd=views).stdout)["data"])
    dom = draw(page, tmp_path)
    assert dom.count("<canvas") == count, dom[-2000:]  # every plot drawn, with no network
    # the same page drawn as SVG: each comparison's legend names the five methods, in their order
    svg = out / "svg.html"
    svg.write_text(html.replace("spec);", "spec, {renderer: 'svg'});"))
    drawn = draw(svg, tmp_path)
    divs = re.split(r'<div id="', drawn)[1:]
    for name in COMPARISONS:
        div = next(d for d in divs if f">{name}<" in d)
        labels = re.findall(r'<text[^>]*>([^<]+)</text>', div)
        assert [t for t in labels if t in LABELS] == LABELS, (name, labels)
        for colour in plots_template.PALETTE[:len(LABELS)]:
            assert colour in div.lower(), (name, colour)
    # DVC's own page, as a control: its CDN scripts do not load here, so nothing is drawn
    default = tmp_path / "default"
    shutil.copytree(views, default / "repo", symlinks=True)
    dvc("config", "--unset", "plots.html_template", cwd=default / "repo")
    dvc("plots", "show", "-o", default / "plots", cwd=default / "repo")
    assert draw(default / "plots/index.html", tmp_path).count("<canvas") == 0


def test_the_plots_page_carries_the_scripts_dvc_loads_with_their_licences():
    page = (ROOT / ".dvc/plots/index.html").read_text()
    assert "{plot_divs}" in page and "{scripts}" not in page  # so DVC adds no CDN script
    assert not re.search(r"<script[^>]*\ssrc=", page)
    scripts = re.findall(r"<script>/\*! (\S+)@(\S+) from npm, build/\S+, sha256 (\w+), BSD-3-Clause\n(.*?)\*/\n(.*?)\n"
                         r"</script>", page, flags=re.S)
    assert {name: version for name, version, *_ in scripts} == plots_template.dvc_versions()
    for name, version, digest, licence, code in scripts:
        assert hashlib.sha256(code.encode()).hexdigest() == digest, name  # the code as npm publishes it
        assert "Redistribution and use in source and binary forms" in licence, name
    assert dvc("config", "plots.html_template", cwd=ROOT).stdout.strip() == "plots/index.html"
    for name, template in plots_template.templates().items():  # the templates are what the tool writes
        assert json.loads((ROOT / ".dvc/plots" / name).read_text()) == template, name


# --- 6. ignored pages ----------------------------------------------------------------------------------------------
def test_the_pages_the_tools_write_are_git_ignored():
    proc = sh("git", "check-ignore", "--no-index", "dvc_plots/index.html", "site/index.html", cwd=ROOT)
    assert proc.stdout.split() == ["dvc_plots/index.html", "site/index.html"]
