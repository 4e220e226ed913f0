"""Rendering the report: Markdown tables, PNG charts (matplotlib) and one self-contained HTML file."""
from __future__ import annotations

import base64
import csv
import html
import io
import re
from pathlib import Path

import numpy as np

from .io import write_csv
from .methods import ALGORITHMS

# (summary key, label, which direction is better) for every metric compared with a paired CI
HEADLINE = [("toxicity", "Toxicity", "lower"),  # toxicity and reward: named by the scorer (sections.side_by_side)
            ("expected_max_toxicity", "Expected maximum toxicity (over k samples)", "lower"),
            ("toxicity_probability", "Toxicity probability (a sample >= threshold)", "lower"),
            ("reward", "Reward", "higher"),
            ("rouge1", "ROUGE-1", "higher"), ("rouge2", "ROUGE-2", "higher"), ("rougeL", "ROUGE-L", "higher"),
            ("length", "Length (tokens)", "neither"),
            ("perplexity", "Perplexity under the starting policy", "lower"),
            ("distinct_1_per_prompt", "Distinct-1 within a prompt's k samples", "higher"),
            ("distinct_2_per_prompt", "Distinct-2 within a prompt's k samples", "higher"),
            ("distinct_3_per_prompt", "Distinct-3 within a prompt's k samples", "higher"),
            ("kl", "KL to the starting policy (per token)", "lower")]
HIST_BINS = 10  # toxicity bins in [0, 1], for the report's chart and for toxicity_hist.csv (`dvc plots`) alike
QUAL_COLUMNS = ["index", "sample", "prompt", "response_before", "response_after", "reward_before", "reward_after", "reward_diff"]


def read_live_history(live_dir) -> dict[str, tuple[list[int], list[float]]]:
    """DVCLive per-step series: metric name -> (steps, values)."""
    root = Path(live_dir) / "plots" / "metrics"
    out = {}
    for tsv in sorted(root.rglob("*.tsv")):
        with tsv.open(encoding="utf-8") as fh:
            rows = list(csv.DictReader(fh, delimiter="\t"))
        name = str(tsv.relative_to(root).with_suffix(""))
        value_col = tsv.stem
        out[name] = ([int(r["step"]) for r in rows], [float(r[value_col]) for r in rows])
    return out


def md_table(header: list[str], rows: list[list]) -> str:
    def cell(v):
        return str(v).replace("|", "\\|").replace("\n", " ")
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")  # C0/C1 control characters: NUL, escapes, bells...


def short(text: str, n: int = 160) -> str:
    """One line of at most n characters, without control characters (generated text can hold any)."""
    text = " ".join(CONTROL.sub(" ", str(text)).split())
    return text if len(text) <= n else text[: n - 1] + "…"


def qual_rows(rows: list[dict]) -> list[list]:
    return [[r["index"], r["sample"], short(r["prompt"]), short(r["response_before"]), short(r["response_after"]),
             f"{r['reward_before']:.3f}", f"{r['reward_after']:.3f}", f"{r['reward_diff']:+.3f}"] for r in rows]


def _png(fig) -> str:
    """The figure as a base64 PNG; the figure is closed."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    _plt().close(fig)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


# Training curves the report draws, where a method logged them (one panel each, one line per method)
CURVES = [("env/reward_mean", "mean reward of the training batch"), *(c for a in ALGORITHMS for c in a.panels)]


PANEL_COLUMNS = 2  # panels side by side: two 4-inch panels fit the HTML page (1100 px) and a Markdown viewer


def training_figure(histories: dict[str, dict]) -> str:
    """Each method's logged training curves ({label: read_live_history(...)}), one panel per curve in CURVES, in
    rows of PANEL_COLUMNS so that the figure stays as wide as the page."""
    plt = _plt()
    panels = [(key, title) for key, title in CURVES if any(key in h for h in histories.values())] or CURVES[:1]
    cols = min(PANEL_COLUMNS, len(panels))
    rows = -(-len(panels) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 3 * rows), squeeze=False, constrained_layout=True)
    for ax in axes.flat[len(panels):]:
        ax.remove()  # an odd number of panels leaves one cell empty
    for ax, (key, title) in zip(axes.flat, panels):
        for label, history in histories.items():
            if key in history:
                ax.plot(*history[key], marker="o", ms=3, label=label)
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("step")
        if ax.lines:
            ax.legend(fontsize=8)
    return _png(fig)


def histogram_figure(series: dict[str, np.ndarray], toxicity: str) -> str:
    """Samples per toxicity bin, one bar set per policy; `toxicity` names the scorer's measure (P(hate), ...)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 3))
    bins = np.linspace(0, 1, HIST_BINS + 1)
    for name, values in series.items():
        ax.hist(values, bins=bins, alpha=0.5, label=name)
    ax.set_xlabel(f"toxicity ({toxicity}) per sample")
    ax.set_ylabel("samples")
    ax.legend()
    return _png(fig)


def max_toxicity_figure(start: np.ndarray, others: dict[str, np.ndarray]) -> str:
    """Per prompt: the highest toxicity of its k samples, start (x) against each other policy (y).
    Points below the diagonal are prompts whose worst sample became less toxic."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    ax.plot([0, 1], [0, 1], color="#999", lw=1, ls="--", label="no change")
    for name, values in others.items():
        ax.scatter(start, values, s=14, alpha=0.7, label=name)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("start: max toxicity over k samples")
    ax.set_ylabel("after: max toxicity over k samples")
    ax.legend()
    return _png(fig)


def frontier_points(entries: dict[str, dict]) -> list[dict]:
    """The reward-KL frontier: the start, then one point a method that ran, its toxicity after against its KL to the
    start (compare.kl_to_start: nats per response, every method alike; best-of-N's `bound` beside its estimate)."""
    first = next(iter(entries.values()))
    points = [{"method": "start", "kl": 0.0, "bound": None, "toxicity": first["toxicity"]["before"]}]
    for e in entries.values():
        kl = e.get("kl_to_start")
        if kl is not None:
            points.append({"method": e["label"], "kl": max(kl["nats"], 0.0), "bound": kl["bound"],
                           "toxicity": e["toxicity"]["after"]})
    return points


# One style a method on the frontier: tab10's colours less its grey (the start's), then the next marker
FRONTIER_COLOURS = [c for i, c in enumerate(
    ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"])
    if i != 7]
FRONTIER_MARKERS = "os^Dv"
# Where a label may go, tried in order: its offset from the point in points (right of it, then left of it; the line
# above, below, then further out) and its horizontal alignment
LABEL_PLACES = [((dx, dy), align) for dy in (4, -12, 14, -22, 24, -32, 34, -42, 44, -52)
                for dx, align in ((5, "left"), (-5, "right"))]


def frontier_styles(points: list[dict]) -> list[dict]:
    """(colour, marker) for each frontier point, in order: the start grey; every other point a pair of its own, up to
    45 methods."""
    styles = []
    for p in points:
        if p["method"] == "start":
            styles.append({"colour": "#888", "marker": "o"})
            continue
        k = sum(s["colour"] != "#888" for s in styles)
        styles.append({"colour": FRONTIER_COLOURS[k % len(FRONTIER_COLOURS)],
                       "marker": FRONTIER_MARKERS[(k // len(FRONTIER_COLOURS)) % len(FRONTIER_MARKERS)]})
    return styles


def place_labels(fig, ax, labels: list) -> None:
    """Move each label (an annotation `offset points` from its point) to the first of LABEL_PLACES where its drawn box
    stays inside the axes and overlaps no label placed before it and no other point's marker; in a crowd, to the
    place inside that overlaps fewest labels, then fewest markers. The first label (the start's) goes first, then
    the lowest (it has the fewest places inside). Measured with the figure's renderer, so the boxes are the
    printed ones."""
    from matplotlib.transforms import Bbox

    renderer = fig.canvas.get_renderer()
    frame = ax.get_window_extent(renderer)
    size = 3.0 * fig.dpi / 72  # a marker's half width in pixels (s=36: 6 points across)
    markers = [ax.transData.transform(label.xy) for label in labels]
    placed = []
    for i in sorted(range(len(labels)), key=lambda i: (i > 0, markers[i][1])):  # the start (first), then lowest first
        label = labels[i]
        others = [Bbox.from_extents(x - size, y - size, x + size, y + size) for j, (x, y) in enumerate(markers)
                  if j != i]
        best = None
        for offset, align in LABEL_PLACES:
            label.set_position(offset)
            label.set_horizontalalignment(align)
            box = label.get_window_extent(renderer)
            edges = box.padded(1)  # a pixel of space around it
            inside = frame.x0 <= box.x0 and box.x1 <= frame.x1 and frame.y0 <= box.y0 and box.y1 <= frame.y1
            score = (not inside, edges.count_overlaps(placed) if placed else 0,  # another label: unreadable
                     edges.count_overlaps(others) if others else 0)  # a marker: hidden in part
            if best is None or score < best[0]:
                best = (score, offset, align, edges)
            if score == (False, 0, 0):
                break
        _, offset, align, edges = best
        label.set_position(offset)
        label.set_horizontalalignment(align)
        placed.append(edges)


def frontier_figure(points: list[dict], toxicity: str) -> str:
    """Toxicity against KL to the start, one point a method: lower and further left is better (less toxic for less
    drift). Best-of-N's estimate is a point, a line to its analytic bound. Each method its own colour and marker,
    its label beside it where it overlaps no other (place_labels)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 3.6))
    labels = []
    for p, style in zip(points, frontier_styles(points)):
        if p["bound"] is not None:
            ax.plot([p["kl"], p["bound"]], [p["toxicity"]] * 2, color="#999", lw=1, zorder=1)
        ax.scatter([p["kl"]], [p["toxicity"]], s=36, zorder=2, label=p["method"], color=style["colour"],
                   marker=style["marker"])
        labels.append(ax.annotate(p["method"], (p["kl"], p["toxicity"]), textcoords="offset points",
                                  xytext=LABEL_PLACES[0][0], fontsize=8, color=style["colour"]))
    ax.set_xlabel("KL to the start (nats per response)")
    ax.set_ylabel(f"toxicity ({toxicity})")
    ax.set_xlim(left=-0.02)
    place_labels(fig, ax, labels)
    return _png(fig)


def html_table(header, rows) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


# A list line's mark: the colour of its outcome (compare.MARK), a dot in Markdown and the line's colour in HTML
MARKS = {"green": "\U0001F7E2", "grey": "\u26AA", "red": "\U0001F534"}  # green, white (grey) and red circles
HTML_CLASS = {"green": "ok", "grey": "same", "red": "flag"}


def _md_item(text: str, mark) -> str:
    if mark is None:
        return f"- {text}"
    return f"- {MARKS[mark]} {'**' + text + '**' if mark == 'red' else text}"


def to_markdown(title: str, sections: list) -> str:
    """`title`: the first line (the answer). `sections`: (heading or None, blocks); a block is ("p", text),
    ("list", [(text, mark or None)]), ("table", header, rows) or ("figure", file name, alt). One list renders both
    reports."""
    parts = [f"# {title}"]
    for heading, blocks in sections:
        if heading:
            parts.append(f"## {heading}")
        for block in blocks:
            kind = block[0]
            if kind == "p":
                parts.append(block[1])
            elif kind == "list":
                parts.append("\n".join(_md_item(text, mark) for text, mark in block[1]))
            elif kind == "table":
                parts.append(md_table(block[1], block[2]))
            elif kind == "figure":
                parts.append(f"![{block[2]}]({block[1]})")
    return "\n\n".join(parts) + "\n"


PAGE = "Detoxification report"  # the HTML page's <title>; its first heading is the answer


def to_html(title: str, sections: list, images: dict[str, str]) -> str:
    """The same sections as one self-contained page, `title` (the answer) its first heading: figures embedded as
    data: URIs (`images`: file -> base64), never wider than the page."""
    style = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}"
             "h1{font-size:1.4em}img{max-width:100%;height:auto}"
             "table{border-collapse:collapse;margin:1em 0;font-size:0.9em}"
             "td,th{border:1px solid #ccc;padding:4px 8px;vertical-align:top}th{background:#f3f3f3}"
             ".flag{color:#b00;font-weight:bold}.ok{color:#070}.same{color:#777}")
    body = []
    for heading, blocks in sections:
        if heading:
            body.append(f"<h2>{html.escape(heading)}</h2>")
        for block in blocks:
            kind = block[0]
            if kind == "p":
                body.append(f"<p>{_inline(block[1])}</p>")
            elif kind == "list":
                body.append("<ul>" + "".join(
                    f"<li class='{HTML_CLASS[mark]}'>{MARKS[mark]} {_inline(text)}</li>" if mark is not None
                    else f"<li>{_inline(text)}</li>" for text, mark in block[1]) + "</ul>")
            elif kind == "table":
                body.append(html_table(block[1], block[2]))
            elif kind == "figure":
                body.append(img(images[block[1]], block[2]))
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{PAGE}</title>"
            f"<style>{style}</style></head><body><h1>{_inline(title)}</h1>{''.join(body)}</body></html>\n")


def _inline(text: str) -> str:
    """Escaped text, with the Markdown emphasis the sections use (**bold**) as HTML."""
    return re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", html.escape(text))


def img(b64: str, alt: str) -> str:
    return f"<img alt='{html.escape(alt)}' src='data:image/png;base64,{b64}'>"


def plot_files(out: Path, every: list[str], series: dict[str, list[dict]], worst: dict, histories: dict,
               frontier: list[dict]):
    """plots/dvc.yaml's plots, long form: one row a point, its `method` (label) and `order` (its place in params.yaml,
    after the start), so that any methods entry appears with no edit to it and keeps its colour in every plot, whichever
    methods are on (every file names every method; one with no point here, or off, gets a row of NaN, which vega
    draws nowhere)."""
    order = {name: i for i, name in enumerate(every)}

    def rows(points: dict[str, list[dict]]) -> list[dict]:
        empty = {k: "NaN" for k in next((p[0] for p in points.values() if p), {})}
        return [{**row, "method": name, "order": order[name]} for name in order
                for row in (points.get(name) or [empty])]

    edges = np.linspace(0, 1, HIST_BINS + 1)
    write_csv(out / "toxicity_hist.csv", rows({name: [
        {"toxicity": round(float(edges[i] + edges[i + 1]) / 2, 3), "samples": int(c)}
        for i, c in enumerate(np.histogram([float(r["toxicity"]) for r in recs], edges)[0])]
        for name, recs in series.items()}), ["toxicity", "samples", "method", "order"])
    write_csv(out / "max_toxicity_per_prompt.csv", rows({name: [
        {"prompt": i, "max_toxicity": float(v)} for i, v in enumerate(worst[name])] for name in series}),
        ["prompt", "max_toxicity", "method", "order"])
    write_csv(out / "toxicity_per_sample.csv", rows({name: [
        {"index": int(r["index"]), "toxicity": float(r["toxicity"])} for r in recs] for name, recs in series.items()}),
        ["index", "toxicity", "method", "order"])
    write_csv(out / "frontier.csv", rows({p["method"]: [{"kl": p["kl"], "toxicity": p["toxicity"]}] for p in frontier}),
              ["kl", "toxicity", "method", "order"])
    for curve in sorted({c for a in ALGORITHMS for c in a.curves}):
        points = {name: [{"step": s, "value": v} for s, v in zip(*h[curve])]
                  for name, h in histories.items() if curve in h}
        if not any(points.values()):
            points = {next(iter(order)): [{"step": "NaN", "value": "NaN"}]}
        write_csv(out / "curves" / f"{curve.replace('/', '_')}.csv", rows(points), ["step", "value", "method", "order"])
