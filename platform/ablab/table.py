"""A paper table rebuilt from MLflow alone: the paper's rows and columns, our value beside the paper's
with the delta, cells we have not measured shown as missing (never filled in)."""
from __future__ import annotations

import csv
import html
import io
import json
import math
from dataclasses import dataclass
from typing import Optional

import pandas as pd

from .study import Row, Study


@dataclass
class Cell:
    ours: Optional[float]
    paper: Optional[float]
    lo: Optional[float] = None
    """Our value's 95% interval (ablab.evidence: seeds and val-image bootstrap), None where not known."""
    hi: Optional[float] = None

    @property
    def half_width(self) -> Optional[float]:
        return None if self.lo is None else (self.hi - self.lo) / 2

    @property
    def delta(self) -> Optional[float]:
        return None if self.ours is None or self.paper is None else self.ours - self.paper


def finished(results: pd.DataFrame) -> pd.DataFrame:
    """The rows of finished runs (a failed or interrupted trial's partial metrics are never shown)."""
    return results[results["status"] == "FINISHED"] if "status" in results else results


def row_variant(row: Row, results: pd.DataFrame) -> Optional[str]:
    """The variant a row reads: its own, else the first its trial evaluated (the same rule the study check uses)."""
    if row.variant or results.empty:
        return row.variant
    evaluated = results.loc[results["trial"] == row.trial, "variant"]
    return evaluated.iloc[0] if len(evaluated) else None


def row_results(row: Row, results: pd.DataFrame) -> pd.DataFrame:
    """The results a measured row reads: its trial, its variant, and the grid values of its ``where``."""
    if not row.measured or results.empty:
        return results[:0]
    sel = (results["trial"] == row.trial) & (results["variant"] == row_variant(row, results))
    for key, value in row.where.items():  # compared as JSON: a grid value may be a list (train.steps)
        sel &= results[key].map(json.dumps) == json.dumps(value) if key in results else False
    return results[sel]


def build_table(study: Study, results: pd.DataFrame, scale: Optional[float] = None,
                replicates: Optional[dict] = None) -> list[tuple[Row, list[Cell]]]:
    """One (row, cells) per layout row. Ours: the mean over seeds of the row's results (row_results), times the
    layout's scale (100: percent), or None when MLflow holds no finished value for it. ``replicates`` (run
    id -> variant -> metric -> bootstrap replicates, ablab.query.replicates): each cell gets its interval."""
    layout = study.table_layout
    if replicates is not None:
        from .evidence import cell_estimate

        return [(row, [_cell(cell_estimate(study, row, col, results, replicates), row.reference.get(col))
                       for col in layout.columns]) for row in layout.rows]
    if layout is None:
        raise ValueError(f"study {study.study} has no table layout")
    scale = layout.scale if scale is None else scale
    done = finished(results)
    out = []
    for row in layout.rows:
        mine = row_results(row, done)
        cells = []
        for col in layout.columns:
            ours = None
            metric = layout.metric(col)
            if metric in mine.columns:
                sel = mine[metric].dropna()
                if len(sel):
                    ours = float(sel.mean()) * scale
            cells.append(Cell(ours, row.reference.get(col)))
        out.append((row, cells))
    return out


def _cell(estimate, paper: Optional[float]) -> Cell:
    return Cell(estimate.value, paper, estimate.lo, estimate.hi)


def _fmt(x: Optional[float], digits: int, signed: bool = False) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    return f"{x:+.{digits}f}" if signed else f"{x:.{digits}f}"


def table_text(study: Study, profile: str, results: pd.DataFrame, fmt: str, replicates: Optional[dict] = None) -> str:
    """The paper's table with our results beside it, captioned with the profile's data set, as md/csv/html/latex;
    with ``replicates``, each cell's interval, and (md, html) the study's claims with their verdicts below."""
    data = study.trial_config(profile, study.trial_points(profile)[0]).data
    text = render(study, build_table(study, results, replicates=replicates), fmt,
                  caption(study, profile, f"{data.kind} {data.val_split}"))
    if study.claims and fmt in ("md", "html"):
        from .evidence import claims_frame

        digits = 1 if study.table_layout.scale >= 100 else 3
        text += ("\n" if fmt == "md" else "") + render_claims(claims_frame(study, results, replicates or {}), fmt, digits)
    return text


def render_claims(frame: pd.DataFrame, fmt: str, digits: int = 1) -> str:
    """The claims as md or html: the pair, the metric, the paper's difference, ours [95% interval], verdict."""
    def ours(r) -> str:
        if r["ours"] is None or pd.isna(r["ours"]):
            return "-"
        interval = (f" [{r['lo']:+.{digits}f}, {r['hi']:+.{digits}f}]" if r["lo"] is not None and not pd.isna(r["lo"])
                    else "")
        return f"{r['ours']:+.{digits}f}{interval}"

    head = ["claim", "metric", "paper", "ours [95%]", "verdict", "covers"]
    rows = [[f"{r['row']} vs {r['vs']}", r["metric"], f"{r['paper']:+.{digits}f}",
             ours(r), r["verdict"], f"{r['interval'] or 'no interval'} ({r['seeds']} seed{'s' if r['seeds'] != 1 else ''})"]
            for _, r in frame.iterrows()]
    title = ("Claims of the paper: ours is row - vs with its 95% interval; reproduced / contradicted: the interval "
             "excludes 0 on the paper's side / the other side; inconclusive: it holds 0.")
    if fmt == "html":
        body = "".join(f"<tr class=\"{html.escape(r[4].replace(' ', '-'))}\" title=\"{html.escape(says)}\">"
                       + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>"
                       for r, says in zip(rows, frame["says"]))
        return (f"<table class=\"ablab-table claims\"><caption>{html.escape(title)}</caption><thead><tr>"
                + "".join(f"<th>{h}</th>" for h in head) + f"</tr></thead><tbody>{body}</tbody></table>\n")
    esc = lambda c: str(c).replace("|", "\\|")
    lines = [title, "", "| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    lines += ["| " + " | ".join(esc(c) for c in r) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def caption(study: Study, profile: str, dataset: str) -> str:
    layout = study.table_layout
    base = layout.caption if layout and layout.caption else f"{study.paper} table {study.table}"
    return (f"{base}. Ours: profile '{profile}' on {dataset}; paper: as published. "
            f"Cells: ours±(half its 95% interval, where known) / paper (delta); '-' = not measured. "
            f"alpha convention: {study.alpha_convention}.")


_LATEX_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                  "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}


def latex_escape(text: str) -> str:
    """Every character LaTeX treats specially, escaped (one pass, so an escape is never escaped again)."""
    return "".join(_LATEX_SPECIAL.get(ch, ch) for ch in text)


def render(study: Study, table: list[tuple[Row, list[Cell]]], fmt: str, cap: str) -> str:
    """md | csv | html | latex."""
    layout = study.table_layout
    digits = 1 if layout.scale >= 100 else 3
    cols = layout.columns
    label = lambda row: row.label + (" (cited)" if row.cited else f" (not reproduced: {row.not_reproduced})"
                                     if row.not_reproduced else "")
    ours = lambda c: _fmt(c.ours, digits) + (f"±{c.half_width:.{digits}f}" if c.half_width is not None else "")
    cell_text = lambda c: f"{ours(c)} / {_fmt(c.paper, digits)} ({_fmt(c.delta, digits, True)})"
    if fmt == "csv":  # the csv module quotes whatever a label holds (commas, quotes, newlines)
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(["row", "cited", "not_reproduced"]
                        + [f"{c}_{k}" for c in cols for k in ("ours", "ours_lo", "ours_hi", "paper", "delta")])
        num = lambda x: "" if x is None else f"{x:.4f}"
        for row, cells in table:
            vals = [row.label, str(row.cited).lower(), row.not_reproduced or ""]
            for c in cells:
                vals += [num(c.ours), num(c.lo), num(c.hi), "" if c.paper is None else f"{c.paper}", num(c.delta)]
            writer.writerow(vals)
        return out.getvalue()
    if fmt == "html":
        head = "".join(f"<th>{html.escape(c)}</th>" for c in cols)
        body = []
        for row, cells in table:
            tds = "".join(f"<td><b>{_fmt(c.ours, digits)}</b>"
                          + (f"<small>±{c.half_width:.{digits}f}</small>" if c.half_width is not None else "")
                          + f" / {_fmt(c.paper, digits)} "
                          f"<small>({_fmt(c.delta, digits, True)})</small></td>" for c in cells)
            body.append(f"<tr class=\"{'ours' if row.measured else 'cited'}\"><th>{html.escape(label(row))}</th>{tds}</tr>")
        return (f"<table class=\"ablab-table\"><caption>{html.escape(cap)}</caption><thead><tr><th></th>{head}</tr></thead>"
                f"<tbody>{''.join(body)}</tbody></table>\n")
    if fmt == "latex":
        esc = latex_escape
        lines = [r"\begin{table}", r"\centering", r"\begin{tabular}{l" + "c" * len(cols) + "}", r"\hline",
                 " & ".join([""] + [esc(c) for c in cols]) + r" \\", r"\hline"]
        for row, cells in table:
            lines.append(" & ".join([esc(label(row))] + [ours(c).replace("±", r"$\pm$") + f" / {_fmt(c.paper, digits)}"
                                                         for c in cells]) + r" \\")
        lines += [r"\hline", r"\end{tabular}", rf"\caption{{{esc(cap)}}}", r"\end{table}"]
        return "\n".join(lines) + "\n"
    md_label = lambda row: label(row).replace("|", "\\|").replace("\n", " ")
    width = max(len(md_label(r)) for r, _ in table)
    lines = [cap, "", "| " + "row".ljust(width) + " | " + " | ".join(cols) + " |",
             "|" + "-" * (width + 2) + "|" + "|".join("---" for _ in cols) + "|"]
    for row, cells in table:
        lines.append("| " + md_label(row).ljust(width) + " | " + " | ".join(cell_text(c) for c in cells) + " |")
    return "\n".join(lines) + "\n"
