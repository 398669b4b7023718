"""One self-contained HTML page per study (the paper's table rebuilt from MLflow, the plots, links to every
MLflow run) and an index over all pages. Everything is read from MLflow, so anyone with the tracking URI
can rebuild it; plots are also written to the study's output dir and logged on the study's launch run."""
from __future__ import annotations

import base64
import html
import re
from datetime import datetime, timezone
from pathlib import Path
from typing import Optional

from ablab import store
from ablab.evidence import effect_pairs
from ablab.journal import LAUNCH, RunRegistry, write_now
from ablab.launch import Launch
from ablab.logs import log
from ablab.naming import REGISTRY_FILE
from ablab.paths import browse_hint, output_root, run_url
from ablab.query import launch_results
from ablab.rows import ResultSet
from ablab.labels import as_trained, setting
from ablab.table import effects_text, table_text

from . import plots

INDEX = "index.html"
STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; color: #222; }
table.ablab-table { border-collapse: collapse; font-size: 13px; margin: 1em 0; }
table.ablab-table th, table.ablab-table td { border: 1px solid #ccc; padding: 3px 6px; text-align: right; }
table.ablab-table tbody th { text-align: left; }
table.ablab-table tr.cited { color: #888; font-style: italic; }
table.ablab-table caption { caption-side: top; text-align: left; font-size: 13px; margin-bottom: .5em; }
figure { display: inline-block; margin: .5em; } figure img { max-width: 100%; border: 1px solid #eee; }
code { background: #f4f4f4; padding: 1px 4px; } .failed { color: #b00; }
"""
# Lets a headless browser (and a reader) confirm every embedded image decoded: data-images-rendered on <body>.
ONLOAD = """<script>window.addEventListener('load', () => { const imgs = Array.from(document.images);
document.body.dataset.imagesRendered = imgs.filter(i => i.complete && i.naturalWidth > 0).length; });</script>"""


def _log_plots(uri: str, launch_run: str, folder: Path, images: list[Path]) -> None:
    """The plots on the launch run: through the launch's journal where its folder is here (the run `ablab run`
    logs to, so a store that is down keeps them for `ablab sync`), else straight to the store (a report rebuilt
    elsewhere, from the tracking URI alone)."""
    registry = folder / REGISTRY_FILE
    if registry.is_file() and RunRegistry(registry).data.get("parent") == launch_run:
        for path in images:
            write_now(uri, registry, "artifact", run=LAUNCH, path=str(path), artifact_path="plots")
    else:
        store.log_artifacts(uri, launch_run, images, "plots")


def _img(path: Path) -> str:
    data = base64.b64encode(path.read_bytes()).decode()
    return (f'<figure><img alt="{html.escape(path.stem)}" src="data:image/png;base64,{data}">'
            f"<figcaption>{html.escape(path.stem.replace('_', ' '))}</figcaption></figure>")


def _cost(uri: str, launch: Optional[str]) -> str:
    """The launch's estimate beside its wall time (ablab.estimate), as `ablab run` printed them at its end."""
    if not launch:
        return ""
    tags = store.run_tags(uri, launch)
    if "ablab.estimate" not in tags:
        return ""
    return (f'<p class="estimate">Cost of the latest launch: {html.escape(tags["ablab.estimate"])}; step costs '
            f'{html.escape(tags.get("ablab.estimate_source", "?"))} (<code>ablab plan</code> prints the estimate).</p>')


def _page(launch: Launch, results: ResultSet, table_html: str, images: list[Path], runs_html: str, browse: str,
          cost: str = "") -> str:
    study, key = launch.study, launch.key
    title = f"{study.study} ({key}): {setting(launch, results)}"
    paper_setting = study.title or study.paper + " table " + study.table
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    figures = "".join(_img(p) for p in images) or "<p>No plots for this study yet.</p>"
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<meta name="ablab-study" content="{html.escape(study.study)}"><meta name="ablab-profile" content="{html.escape(key)}">
<style>{STYLE}</style></head>
<body><p><a href="{INDEX}">all studies</a></p>
<h1>{html.escape(title)}</h1>
<p>Paper <code>{html.escape(study.paper)}</code>, table {html.escape(study.table)} (the paper's setting:
{html.escape(paper_setting)}); alpha convention
<code>{study.alpha_convention}</code>. Built {stamp} from MLflow.</p>
{cost}
<h2>Effects, the paper's table, and its claims</h2>
{table_html}
<h2>Plots</h2>
{figures}
<h2>MLflow runs</h2>
<p>{browse}</p>
{runs_html}
{ONLOAD}
</body></html>
"""


def _browse(tracking_uri: str, experiment_id: str) -> str:
    """The paragraph that says how to open the study's runs in the MLflow UI (ablab.paths.browse_hint)."""
    command, url = browse_hint(tracking_uri, experiment_id)
    start = (f"Start the MLflow UI on the local store: <code>{html.escape(command)}</code>, then open "
             if command else "The tracking server's UI: ")
    return (f'{start}<a class="mlflow-runs" href="{html.escape(url)}">{html.escape(url)}</a>: the study\'s runs, each '
            f"trial nested under its launch run (the + beside it expands it). Each trial below links to its run page.")


def _runs_table(df, tracking_uri: str, experiment_id: str) -> str:
    if df.empty:
        return "<p>No runs.</p>"
    rows = []
    for run_id, group in df.groupby("run_id", sort=False):
        r = group.iloc[0]
        status = html.escape(str(r["status"]))
        error = f'<br><span class="failed">{html.escape(str(r["error"])[:300])}</span>' if r.get("error") else ""
        rows.append(f'<tr><td><a href="{run_url(tracking_uri, experiment_id, run_id)}">{html.escape(str(r["trial_key"]))}</a>'
                    f"</td><td>{status}{error}</td></tr>")
    return f'<table class="ablab-table runs"><thead><tr><th>trial</th><th>status</th></tr></thead><tbody>{"".join(rows)}</tbody></table>'


def build_report(launch: Launch, tracking_uri: Optional[str] = None, out_root: Optional[str] = None,
                 dashboards_dir: Optional[str] = None) -> Path:
    """Write <dashboards>/<study>-<launch key>.html (the key: the profile, with a digest of the launch's
    ``--set`` where it had some) and refresh the index; returns the page's path."""
    read = launch_results(launch, tracking_uri, out_root)
    results, uri, out_root = read.results, read.tracking_uri, read.out_root
    df = results.frame
    experiment_id = store.experiment_id(uri, launch.study.study)

    plot_dir = launch.folder(out_root) / "plots"
    images = []
    launch = as_trained(launch)  # labels and legends name the backbones this launch trained
    study = launch.study
    if not df.empty:  # e.g. a profile never run
        runs = {r["trial_key"]: r["run_id"] for _, r in df.drop_duplicates("run_id").iterrows()}
        effects = plots.effects_vs_iou(study, results, plot_dir)
        curves = store.histories(uri, df["run_id"].unique(), ("train/loss", "val/"))
        images = [p for p in (effects, plots.learning_curves(study, df, curves, plot_dir),
                              plots.alpha_sweep(study, df, plot_dir), plots.threshold_curves(study, df, plot_dir),
                              None if effects else plots.ap_vs_iou(study, df, plot_dir),
                              plots.confidence_vs_iou(study, df, store.scatter_samples(uri, runs), plot_dir)) if p]
    launch_run = store.launch_run(uri, experiment_id, launch.key)
    if launch_run:
        _log_plots(uri, launch_run, plot_dir.parent, images)

    table_html = ""
    if study.table_layout:  # the effect view first (what an ablation is read for), then the paper's table
        table_html = (effects_text(launch, results, "html") if effect_pairs(study) else "") + \
            table_text(launch, results, "html")
    page = _page(launch, results, table_html, images, _runs_table(df, uri, experiment_id), _browse(uri, experiment_id),
                 _cost(uri, launch_run))

    out = Path(dashboards_dir) if dashboards_dir else output_root(out_root) / "dashboards"
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{study.study}-{launch.key}.html"
    path.write_text(page)
    write_index(out)
    log.info(f"[report] {path} ({len(images)} plots, {0 if df.empty else df['run_id'].nunique()} runs); index: {out / INDEX}")
    return path


def write_index(folder: Path) -> Path:
    """index.html linking every study page in ``folder``."""
    items = []
    for page in sorted(folder.glob("*.html")):
        if page.name == INDEX:
            continue
        text = page.read_text(errors="replace")
        title = re.search(r"<title>(.*?)</title>", text, re.S)
        items.append(f'<li><a href="{html.escape(page.name)}">{title.group(1) if title else html.escape(page.stem)}</a></li>')
    body = "<ul>" + "".join(items) + "</ul>" if items else "<p>No study reports yet: run <code>ablab report STUDY</code>.</p>"
    index = folder / INDEX
    index.write_text(f"<!doctype html><html><head><meta charset=\"utf-8\"><title>ablab studies</title><style>{STYLE}</style>"
                     f"</head><body><h1>ablab studies</h1>{body}</body></html>\n")
    return index
