"""A paper table rebuilt from MLflow alone: the paper's rows and columns, our value beside the paper's
with the delta, cells we have not measured shown as missing (never filled in). Rendering only: the rows' labels
and the caption's setting come from ablab.labels, the intervals and verdicts from ablab.evidence."""
from __future__ import annotations

import csv
import html
import io
import math
from dataclasses import dataclass
from typing import Optional

import pandas as pd


from .evidence import INCONCLUSIVE, POWER, WITHIN, cell_estimate, claims_frame, effects_frame, verdict_text
from .labels import as_trained, papers_setting, setting
from .launch import Launch
from .rows import ResultSet
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
        """The farther end of the interval from our value (a percentile interval need not be symmetric)."""
        return None if self.lo is None else max(self.hi - self.ours, self.ours - self.lo)

    @property
    def delta(self) -> Optional[float]:
        return None if self.ours is None or self.paper is None else self.ours - self.paper


def build_table(study: Study, results: ResultSet, scale: Optional[float] = None) -> list[tuple[Row, list[Cell]]]:
    """One (row, cells) per layout row. Ours: the mean over seeds of the row's results (ResultSet.of_row), times
    the layout's scale (100: percent), or None when MLflow holds no finished value for it. Where the results have
    their replicates (ablab.store.replicates), each cell gets its interval."""
    layout = study.table_layout
    if layout is None:
        raise ValueError(f"study {study.study} has no table layout")
    if results.replicates is not None:
        return [(row, [_cell(cell_estimate(study, row, col, results), row.reference.get(col))
                       for col in layout.columns]) for row in layout.rows]
    scale = layout.scale if scale is None else scale
    done = results.finished()
    out = []
    for row in layout.rows:
        mine = done.of_row(row)
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


def table_text(launch: Launch, results: ResultSet, fmt: str) -> str:
    """The paper's table with our results beside it, captioned with the launch's data set, as md/csv/html/latex;
    where the results have their replicates, each cell's interval, and (md, html) the study's claims with their verdicts below."""
    comparable = papers_setting(launch)
    launch = as_trained(launch)
    study = launch.study
    text = render(study, build_table(study, results), fmt,
                  caption(launch, setting(launch, results), comparable), deltas=comparable)
    if study.claims and fmt in ("md", "html"):
        digits = 1 if study.table_layout.scale >= 100 else 3
        frame = claims_frame(launch, results)
        text += ("\n" if fmt == "md" else "") + render_claims(frame, fmt, digits)
    return text


def effects_text(launch: Launch, results: ResultSet, fmt: str) -> str:
    """Each change against its baseline (the claims' pairs, and rows' ``baseline``), per column: ours (row - vs)
    with its 95% interval / the paper's, and the verdict where the paper gives a difference; md, csv or html."""
    launch = as_trained(launch)
    study = launch.study
    frame = effects_frame(launch, results)
    digits = 1 if study.table_layout.scale >= 100 else 3
    cap = (f"Effects of {study.paper} table {study.table}: row - baseline, ours [95% interval] / paper (verdict). "
           f"Ours: profile '{launch.profile}': {setting(launch, results)}.")
    if fmt == "csv":
        return frame.to_csv(index=False)
    num = lambda x, signed=True: "-" if x is None or pd.isna(x) else f"{x:+.{digits}f}"
    cell = lambda r: (f"{num(r['ours'])}" + (f" [{num(r['lo'])}, {num(r['hi'])}]" if r["lo"] is not None and not pd.isna(r["lo"]) else "")
                      + f" / {num(r['paper'])}" + (f" ({r['verdict']})" if r["verdict"] else ""))
    columns = study.table_layout.columns
    pairs = list(dict.fromkeys(zip(frame["row"], frame["vs"])))
    table = [[f"{a} vs {b}"] + [cell(r) for _, r in frame[(frame["row"] == a) & (frame["vs"] == b)].iterrows()]
             for a, b in pairs]
    return _grid(["effect", *columns], table, cap, fmt, "effects", ["<tr>"] * len(table), row_header=True)


def render_claims(frame: pd.DataFrame, fmt: str, digits: int = 1) -> str:
    """The claims as md or html: the pair, its kind, the metric, the paper's difference, ours [95% interval], the
    verdict (with why, and against the paper's difference), the power of its seeds against the paper's difference
    and the difference they detect at 80% power (between models), what the interval covers; then, in words, what
    each claim that says more than its verdict found."""
    num = lambda x, signed=True: "-" if x is None or pd.isna(x) else f"{x:+.{digits}f}" if signed else f"{x:.{digits}f}"

    def ours(r) -> str:
        if r["ours"] is None or pd.isna(r["ours"]):
            return "-"
        return num(r["ours"]) + (f" [{num(r['lo'])}, {num(r['hi'])}]" if not _missing(r["lo"]) else "")

    def powered(r) -> str:
        if r["kind"] == WITHIN:
            return "one model: seeds not needed"
        if _missing(r["power"]):
            return "-"
        return f"{r['power']:.2f} (detects {num(r['detectable'], signed=False)})"

    head = ["claim", "kind", "metric", "paper", "ours [95%]", "verdict", "power vs paper (detects at 80%)", "covers"]
    rows = [[f"{r['row']} vs {r['vs']}", r["kind"], r["metric"], num(r["paper"]), ours(r), verdict_text(r),
             powered(r), f"{r['interval'] or 'no interval'} ({r['seeds']} seed{'s' if r['seeds'] != 1 else ''})"]
            for _, r in frame.iterrows()]
    title = ("Claims of the paper: ours is row - vs with its 95% interval; reproduced / contradicted: the interval "
             "excludes 0 on the paper's side / the other side; inconclusive: it holds 0, or (between models) fewer "
             "paired seeds than a verdict needs; smaller / larger: it excludes the paper's difference too.")
    opens = [f"<tr class=\"{html.escape(r['verdict'].replace(' ', '-'))}\" title=\"{html.escape(r['says'])}\">"
             for _, r in frame.iterrows()]
    text = _grid(head, rows, title, fmt, "claims", opens)
    said = [f"{r['row']} vs {r['vs']} on {r['metric']}: {line}" for _, r in frame.iterrows()
            if (line := finding(r, digits))]
    if not said:
        return text
    if fmt == "html":
        return text + "<ul class=\"findings\">" + "".join(f"<li>{html.escape(x)}</li>" for x in said) + "</ul>\n"
    return text + "\n" + "".join(f"- {x}\n" for x in said)


def _missing(x) -> bool:
    return x is None or (isinstance(x, float) and math.isnan(x))


def finding(r, digits: int = 1) -> str:
    """What a claims-frame row says beyond its verdict, in a sentence, or "" where it says nothing more."""
    paper = f"{r['paper']:+.{digits}f}"
    if r["verdict"] == INCONCLUSIVE and r["reason"]:
        return (f"{r['seeds']} paired seed{'s' if r['seeds'] != 1 else ''} of these separately trained models, fewer "
                f"than the {r['reason'].removeprefix('needs ')} a verdict between models needs")
    if r["against_paper"]:
        return (f"our interval [{r['lo']:+.{digits}f}, {r['hi']:+.{digits}f}] excludes the paper's {paper}: the "
                f"effect here is {r['against_paper']} than the paper's")
    if r["verdict"] == INCONCLUSIVE and not _missing(r["power"]):
        if r["power"] >= POWER:
            return (f"inconclusive although its {r['seeds']} seeds had {r['power']:.2f} power against the paper's "
                    f"{paper}: an effect of the paper's size would likely have shown, so the effect here is likely "
                    f"smaller")
        return (f"its {r['seeds']} seeds had only {r['power']:.2f} power against the paper's {paper} (they detect "
                f"{r['detectable']:.{digits}f} at 80%): more seeds would tell")
    return ""


def _grid(head: list[str], rows: list[list], title: str, fmt: str, css: str, opens: list[str],
          row_header: bool = False) -> str:
    """A titled table as md or html (``opens``: each html row's opening tag; ``row_header``: its first cell a th)."""
    if fmt == "html":
        cell = lambda i, c: f"<th>{html.escape(str(c))}</th>" if row_header and i == 0 else f"<td>{html.escape(str(c))}</td>"
        body = "".join(o + "".join(cell(i, c) for i, c in enumerate(r)) + "</tr>" for o, r in zip(opens, rows))
        return (f"<table class=\"ablab-table {css}\"><caption>{html.escape(title)}</caption><thead><tr>"
                + "".join(f"<th>{html.escape(h)}</th>" for h in head) + f"</tr></thead><tbody>{body}</tbody></table>\n")
    esc = lambda c: str(c).replace("|", "\\|")
    lines = [title, "", "| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    lines += ["| " + " | ".join(esc(c) for c in r) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def caption(launch: Launch, dataset: str, deltas: bool = True) -> str:
    """The table's caption; ``deltas``: the cells give ours - paper (only where both ran the paper's setting)."""
    study = launch.study
    layout = study.table_layout
    base = layout.caption if layout and layout.caption else f"{study.paper} table {study.table}"
    cells = ("ours±(its 95% interval's farther end, where known) / paper (delta)" if deltas else
             "ours±(its 95% interval's farther end, where known) / paper, without a delta: ours is not the paper's "
             "setting, so the effects (ablab table --effects) are what compare")
    return (f"{base}. Ours: profile '{launch.profile}': {dataset}; paper: as published ({study.title or 'its setting'}). "
            f"Cells: {cells}; '-' = not measured. alpha convention: {study.alpha_convention}.")


_LATEX_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                  "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}


def latex_escape(text: str) -> str:
    """Every character LaTeX treats specially, escaped (one pass, so an escape is never escaped again)."""
    return "".join(_LATEX_SPECIAL.get(ch, ch) for ch in text)


def render(study: Study, table: list[tuple[Row, list[Cell]]], fmt: str, cap: str, deltas: bool = True) -> str:
    """md | csv | html | latex; ``deltas``: each cell with ours - paper (else the csv's delta column is empty)."""
    layout = study.table_layout
    digits = 1 if layout.scale >= 100 else 3
    cols = layout.columns
    label = lambda row: row.label + (" (cited)" if row.cited else f" (not reproduced: {row.not_reproduced})"
                                     if row.not_reproduced else "")
    ours = lambda c: _fmt(c.ours, digits) + (f"±{c.half_width:.{digits}f}" if c.half_width is not None else "")
    delta = lambda c: c.delta if deltas else None
    cell_text = lambda c: f"{ours(c)} / {_fmt(c.paper, digits)}" + (f" ({_fmt(c.delta, digits, True)})" if deltas else "")
    if fmt == "csv":  # the csv module quotes whatever a label holds (commas, quotes, newlines)
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(["row", "cited", "not_reproduced"]
                        + [f"{c}_{k}" for c in cols for k in ("ours", "ours_lo", "ours_hi", "paper", "delta")])
        num = lambda x: "" if x is None else f"{x:.4f}"
        for row, cells in table:
            vals = [row.label, str(row.cited).lower(), row.not_reproduced or ""]
            for c in cells:
                vals += [num(c.ours), num(c.lo), num(c.hi), "" if c.paper is None else f"{c.paper}", num(delta(c))]
            writer.writerow(vals)
        return out.getvalue()
    if fmt == "html":
        head = "".join(f"<th>{html.escape(c)}</th>" for c in cols)
        body = []
        for row, cells in table:
            tds = "".join(f"<td><b>{_fmt(c.ours, digits)}</b>"
                          + (f"<small>±{c.half_width:.{digits}f}</small>" if c.half_width is not None else "")
                          + f" / {_fmt(c.paper, digits)}"
                          + (f" <small>({_fmt(c.delta, digits, True)})</small>" if deltas else "") + "</td>"
                          for c in cells)
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
