"""Rendering the report: Markdown tables, PNG charts (matplotlib) and one self-contained HTML file."""
from __future__ import annotations

import base64
import csv
import html
import io
import re
from pathlib import Path

import numpy as np

HEADLINE = [("toxicity", "Toxicity (P(hate))", "lower"),
            ("expected_max_toxicity", "Expected maximum toxicity (over k samples)", "lower"),
            ("toxicity_probability", "Toxicity probability (a sample >= threshold)", "lower"),
            ("reward", "Reward (not-hate logit)", "higher"),
            ("rouge1", "ROUGE-1", "higher"), ("rouge2", "ROUGE-2", "higher"), ("rougeL", "ROUGE-L", "higher"),
            ("length", "Length (tokens)", "-"),
            ("perplexity", "Perplexity under the starting policy", "lower")]
HIST_BINS = 10  # toxicity bins in [0, 1], for the report's chart and for toxicity_hist.csv (`dvc plots`) alike
QUAL_COLUMNS = ["prompt", "response_before", "response_after", "reward_before", "reward_after", "reward_diff"]


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


def headline_rows(summary: dict) -> list[list[str]]:
    rows = []
    for key, label, better in HEADLINE:
        s = summary[key]
        rows.append([label, f"{s['before']:.4f}", f"{s['after']:.4f}", f"{s['diff']:+.4f}",
                     f"[{s['diff_ci_low']:+.4f}, {s['diff_ci_high']:+.4f}]", better])
    return rows


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
    return [[short(r["prompt"]), short(r["response_before"]), short(r["response_after"]),
             f"{r['reward_before']:.3f}", f"{r['reward_after']:.3f}", f"{r['reward_diff']:+.3f}"] for r in rows]


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def figures(history: dict, tox_before, tox_after) -> dict[str, str]:
    """Base64 PNGs: training curves and the toxicity histogram before vs after."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = {}
    curves = [("env/reward_mean", "mean reward"), ("objective/kl", "KL to reference"),
              ("ppo/returns/mean", "mean return")]
    fig, axes = plt.subplots(1, len(curves), figsize=(12, 3))
    for ax, (key, title) in zip(axes, curves):
        steps, values = history.get(key, ([], []))
        ax.plot(steps, values, marker="o")
        ax.set_title(title)
        ax.set_xlabel("PPO step")
    out["training"] = _png(fig)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6, 3))
    bins = np.linspace(0, 1, HIST_BINS + 1)
    ax.hist(tox_before, bins=bins, alpha=0.6, label="before")
    ax.hist(tox_after, bins=bins, alpha=0.6, label="after")
    ax.set_xlabel("toxicity (P(hate)) per sample")
    ax.set_ylabel("samples")
    ax.legend()
    out["toxicity_hist"] = _png(fig)
    plt.close(fig)
    return out


def html_table(header, rows) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def html_report(title: str, sections: list[tuple[str, str]]) -> str:
    """`sections`: (heading, inner HTML). One file, images embedded as data: URIs."""
    style = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}"
             "table{border-collapse:collapse;margin:1em 0;font-size:0.9em}"
             "td,th{border:1px solid #ccc;padding:4px 8px;vertical-align:top}th{background:#f3f3f3}"
             ".flag{color:#b00;font-weight:bold}.ok{color:#070}")
    body = "".join(f"<h2>{html.escape(h)}</h2>{inner}" for h, inner in sections)
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{style}</style></head><body><h1>{html.escape(title)}</h1>{body}</body></html>\n")


def img(b64: str, alt: str) -> str:
    return f"<img alt='{html.escape(alt)}' src='data:image/png;base64,{b64}'>"

