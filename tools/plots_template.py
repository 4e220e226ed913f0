"""Write .dvc/plots/: index.html, DVC's plots page with vega, vega-lite and vega-embed inline, so `dvc plots show`
works offline (DVC's own page loads them from a CDN; .dvc/config names ours: plots.html_template), and the vega-lite
templates plots/dvc.yaml's plots name (`template: methods`): one colour per method in every plot.

    python tools/plots_template.py            # npm pack the versions DVC's page loads, write the page and templates
    python tools/plots_template.py --templates-only    # the templates alone (no npm)

The versions are the ones dvc_render's default page names, so the page runs the specs DVC writes as DVC tested
them; `npm pack` checks each tarball against the registry's integrity hash. Each script keeps its licence
(BSD-3-Clause) and the sha256 of its code; tests/test_dvc_views.py checks both and that the templates are these.
"""
import argparse
import hashlib
import json
import re
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

PACKAGES = ("vega", "vega-lite", "vega-embed")  # the order DVC's page loads them: vega-embed needs the other two
PAGE = """<!DOCTYPE html>
<!-- DVC's plots page (dvc_render's PAGE_HTML) with its three CDN scripts inline: written by
     tools/plots_template.py, named in .dvc/config (plots.html_template). DVC fills refresh_tag and plot_divs;
     with no scripts placeholder it adds no CDN script. -->
<html>
<head>
    {{refresh_tag}}
    <meta charset="utf-8">
    <title>DVC Plot</title>
{scripts}
    <style>
        table {{
            border-spacing: 15px;
        }}
    </style>
</head>
<body>
    {{plot_divs}}
</body>
</html>
"""


PALETTE = ["#7f7f7f", "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#bcbd22",
           "#17becf"]  # start grey, then matplotlib's tab10
# A datum's method: the `method` column of the report's long-form files (reports/plots/*.csv), which name every method
# of the run in every file, each with its `order` in the report: colours follow that order, so a method has the same
# colour in every plot, whatever params.yaml's methods entries are. DVC gives the template each row's columns.
METHOD = "datum.method"
BY_METHOD = {"sort": {"field": "order", "op": "min"}, "scale": {"range": PALETTE}}


def vega_lite(about: str, mark: dict, name: str, expression: str, colour: dict) -> dict:
    """A vega-lite template: the series `name` (computed by `expression`) by colour, DVC's revision by dashes
    (lines) or shapes (points)."""
    x, y = "<DVC_METRIC_X>", "<DVC_METRIC_Y>"
    dashes = {"legend": {"symbolType": "stroke", "symbolStrokeColor": "black", "symbolStrokeWidth": 2}}
    revision = ({"shape": {"field": "rev", "type": "nominal", "title": "revision"}} if mark["type"] == "point" else
                {"strokeDash": {"field": "rev", "type": "nominal", "title": "revision", **dashes}})
    return {"$schema": "https://vega.github.io/schema/vega-lite/v5.json", "description": about,
            "data": {"values": "<DVC_METRIC_DATA>"}, "title": "<DVC_METRIC_TITLE>", "width": 420, "height": 260,
            "transform": [{"calculate": expression, "as": name}],
            "mark": {**mark, "tooltip": True},
            "encoding": {"x": {"field": x, "type": "quantitative", "title": "<DVC_METRIC_X_LABEL>"},
                         "y": {"field": y, "type": "quantitative", "title": "<DVC_METRIC_Y_LABEL>",
                               "scale": {"zero": False}},
                         "color": {"field": name, "type": "nominal", "title": name, **colour},
                         **revision,
                         "tooltip": [{"field": "rev", "title": "revision"}, {"field": name},
                                     {"field": x, "type": "quantitative"}, {"field": y, "type": "quantitative"}]}}


def templates() -> dict[str, dict]:
    """{file name: template} of .dvc/plots: the methods side by side, as lines, or as points where x repeats."""
    line = {"type": "line"}  # no points on it: a legend of points would hide the dashes
    return {"methods.json": vega_lite("One colour per method, the same in every plot; dashes tell revisions apart "
                                      "(dvc plots diff).", line, "method", METHOD, BY_METHOD),
            "methods_points.json": vega_lite("As methods.json, as points (shapes tell revisions apart): for data "
                                             "with several rows at one x.",
                                             {"type": "point", "filled": True, "size": 30}, "method", METHOD,
                                             BY_METHOD)}


def dvc_versions() -> dict[str, str]:
    """{package: version} of the scripts dvc_render's default page loads from the CDN."""
    from dvc_render.vega import VegaRenderer

    found = dict(re.findall(r"npm/(vega(?:-lite|-embed)?)@([\w.-]+)", VegaRenderer.SCRIPTS))
    missing = [p for p in PACKAGES if p not in found]
    if missing:
        sys.exit(f"error: dvc_render's page names no version of {missing}: {VegaRenderer.SCRIPTS}")
    return {p: found[p] for p in PACKAGES}


def npm_files(package: str, version: str, tmp: Path) -> tuple[str, str]:
    """(minified build, LICENSE text) of package@version from the npm registry."""
    subprocess.run(["npm", "pack", "--silent", f"{package}@{version}"], cwd=tmp, check=True, stdout=subprocess.DEVNULL)
    with tarfile.open(tmp / f"{package}-{version}.tgz") as tar:
        def read(name):
            return tar.extractfile(f"package/{name}").read().decode("utf-8")
        return read(f"build/{package}.min.js"), read("LICENSE")


def script(package: str, version: str, code: str, licence: str) -> str:
    """One inline <script>: its name, version, sha256 and licence in a comment, then the code as published."""
    if "</script" in code.lower() or "*/" in licence:
        sys.exit(f"error: {package}@{version} cannot be inlined as it is (a </script or */ in it)")
    code = code.strip()  # the file less its final newline
    digest = hashlib.sha256(code.encode("utf-8")).hexdigest()
    return (f"    <script>/*! {package}@{version} from npm, build/{package}.min.js, sha256 {digest}, BSD-3-Clause\n"
            f"{licence.strip()}\n*/\n{code}\n</script>")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / ".dvc/plots",
                        help="the folder (DVC's templates folder, .dvc/plots)")
    parser.add_argument("--templates-only", action="store_true", help="write the vega-lite templates alone (no npm)")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    for name, template in templates().items():
        (args.out / name).write_text(json.dumps(template, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {', '.join(templates())} in {args.out}", file=sys.stderr)
    if args.templates_only:
        return
    with tempfile.TemporaryDirectory() as tmp:
        scripts = []
        for package, version in dvc_versions().items():
            print(f"npm pack {package}@{version}", file=sys.stderr)
            scripts.append(script(package, version, *npm_files(package, version, Path(tmp))))
    page = args.out / "index.html"
    page.write_text(PAGE.format(scripts="\n".join(scripts)), encoding="utf-8")
    print(f"wrote {page} ({page.stat().st_size / 1e6:.2f} MB)", file=sys.stderr)


if __name__ == "__main__":
    main()
