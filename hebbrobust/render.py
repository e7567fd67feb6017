"""A report's page, rendered: the jinja2 templates in hebbrobust/templates (report.html.j2: one
self-contained page, images as data URIs; report.md.j2: Markdown linking the PNG files) fed
from a `report.Report`; a study comparison's (compare.html.j2, compare.md.j2) from a
`compare.Comparison`. Tables are pandas' own `to_html` (HTML) or a plain pipe table (Markdown)."""

from __future__ import annotations

import base64
import html
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import jinja2
import numpy as np
import pandas as pd
from markupsafe import Markup

from hebbrobust.metrics import UNCONVERGED_FRAC as UNCONVERGED
from hebbrobust.study.record import KIND
from hebbrobust.tracking import experiment_url, mlflow_run_url

if TYPE_CHECKING:
    from hebbrobust.compare import Comparison
    from hebbrobust.report import Report

FORMATS = ("html", "md")
_ENV = jinja2.Environment(
    loader=jinja2.PackageLoader("hebbrobust", "templates"),
    autoescape=jinja2.select_autoescape(enabled_extensions=("html.j2",), default_for_string=False),
    trim_blocks=True,
    lstrip_blocks=True,
    keep_trailing_newline=True,
)


def fmt(value: Any) -> str:
    """One table cell: – for missing, yes/blank for booleans, 4 significant digits for floats."""
    if value is None or value is pd.NA or (isinstance(value, float) and np.isnan(value)):
        return "–"
    if isinstance(value, bool | np.bool_):
        return "yes" if value else ""
    if isinstance(value, float | np.floating):
        return f"{value:.4g}"
    return str(value)


def corr_note(corr: pd.DataFrame) -> str:
    """Correlation rows as the lines of a figure note."""
    lines = []
    for _, r in corr.iterrows():
        if r["note"]:
            lines.append(f"{r['kind']:<9} n={r['n']:<3} {r['note']}")
        else:
            line = f"{r['kind']:<9} n={r['n']:<3} Pearson {r['pearson']:+.2f}"
            if "pearson_lo" in r and np.isfinite(r["pearson_lo"]):
                line += f" [{r['pearson_lo']:+.2f}, {r['pearson_hi']:+.2f}]"
            lines.append(line + f"  Spearman {r['spearman']:+.2f}")
    return "\n".join(lines)


def member_title(row: pd.Series, objectives: Sequence[tuple[str, str]]) -> str:
    """A front member's panel title: trial, kind, scores."""
    scores = [f"{m} {fmt(row.get(m))}" for m, _ in objectives]
    if UNCONVERGED in row:
        scores.append(f"unconverged {fmt(row[UNCONVERGED])}")
    return f"{row['trial_id']} ({row.get(KIND, '?')})\n" + "\n".join(scores)


def rated_trials(r: Report) -> int:
    """COMPLETE trials rated, over the model kinds."""
    return int(r.importance.drop_duplicates("kind")["trials"].sum()) if len(r.importance) else 0


def _cells(df: pd.DataFrame, columns: Sequence[str], link: Callable[[str, str], str]) -> pd.DataFrame:
    """`df[columns]` (those present) as formatted strings; run ids through `link(text, run_id)`."""
    cols = [c for c in dict.fromkeys(columns) if c in df.columns]
    out = df[cols].map(fmt) if len(df) else pd.DataFrame(columns=cols)
    if "run_id" in cols:
        out["run_id"] = [link(fmt(v), str(v)) for v in df["run_id"]]
    return out


def _html_table(urls: dict[str, str | None]) -> Callable[..., Markup]:
    def link(text: str, run: str) -> str:
        url = urls.get(run)
        if url:
            return f'<a href="{html.escape(url, quote=True)}">{html.escape(text)}</a>'
        return f"<code>{html.escape(text)}</code>"

    def table(df: pd.DataFrame, columns: Sequence[str]) -> Markup:
        cells = _cells(df, columns, link)
        escaped = cells.apply(lambda col: col if col.name == "run_id" else col.map(html.escape))
        return Markup(f'<div class="scroll">{escaped.to_html(index=False, escape=False, border=0)}</div>')

    return table


def _md_table(urls: dict[str, str | None]) -> Callable[..., str]:
    def link(text: str, run: str) -> str:
        url = urls.get(run)
        return f"[{text}]({url})" if url else f"`{text}`"

    def table(df: pd.DataFrame, columns: Sequence[str]) -> str:
        cells = _cells(df, columns, link)
        rows = [" | ".join(str(v).replace("|", "\\|") for v in row) for row in cells.itertuples(index=False)]
        lines = ["| " + " | ".join(cells.columns) + " |", "|" + "---|" * len(cells.columns)]
        return "\n".join(lines + [f"| {row} |" for row in rows])

    return table


def _image(out_dir: Path, html_page: bool) -> Callable[[str], str]:
    """A figure's src: a data URI (HTML, self-contained) or the file's name (Markdown)."""

    def image(name: str) -> str:
        if not html_page:
            return name
        return "data:image/png;base64," + base64.b64encode((out_dir / name).read_bytes()).decode("ascii")

    return image


def compare_page(c: Comparison, fmt_name: str) -> str:
    """The study comparison page in `fmt_name` ("html" or "md")."""
    html_page = fmt_name == "html"
    shares = [col for col in c.table.columns if col.startswith("dominated_by_")]
    cols = ["study", "sampler", "scheduler", "trials", "finished", "gated", "stopped", "failed", "hours",
            "hypervolume", "front", *shares]  # fmt: skip
    return _ENV.get_template(f"compare.{fmt_name}.j2").render(
        c=c, cols=cols, generated=datetime.now(UTC).isoformat(timespec="seconds"),
        best=c.table.loc[c.table["hypervolume"].idxmax(), "study"] if len(c.table) else "?",
        table=_html_table({}) if html_page else _md_table({}), image=_image(c.out_dir, html_page),
        dominance=c.dominance.reset_index(), dominance_cols=["front of", *c.dominance.columns],
    )  # fmt: skip


def page(r: Report, fmt_name: str) -> str:
    """The report page in `fmt_name` ("html" or "md")."""
    target, study = r.study.target, r.study
    urls = {str(run): mlflow_run_url(target.uri, target.experiment_id, str(run)) for run in r.trials.get("run_id", [])}
    html_page = fmt_name == "html"
    image = _image(r.out_dir, html_page)

    return _ENV.get_template(f"report.{fmt_name}.j2").render(
        r=r, study=study, spec=study.spec, c=r.counts, names=[m for m, _ in study.objectives],
        kinds=r.trials[KIND].fillna("?").value_counts().to_dict() if KIND in r.trials.columns else {},
        generated=datetime.now(UTC).isoformat(timespec="seconds"), KIND=KIND, UNCONVERGED=UNCONVERGED,
        table=_html_table(urls) if html_page else _md_table(urls), image=image, rated=rated_trials(r),
        not_rated=sorted({n for n in r.importance["note"] if n}), target=target,
        parent_url=mlflow_run_url(target.uri, target.experiment_id, study.parent_run_id),
        runs_url=experiment_url("http://127.0.0.1:5000", target.experiment_id, study.objectives[0][0]),
        evaluator=r.importance["evaluator"].iloc[0] if len(r.importance) else "", ci="95%", **_selections(r),
    )  # fmt: skip


def _selections(r: Report) -> dict[str, Any]:
    """The page's row selections: the population's correlations (all but the unconverged
    fraction's), the unconverged fraction's, the front, the per-value table's parameters; the audit's
    columns; each transfer matrix with its sources as a column."""
    corr = r.correlations
    lead = ["trial_id", KIND, "eps", "pgd_acc", "worst_acc", "gap"]
    audit_cols = lead + [c for c in r.audit.columns if c not in lead and c != "masked"] + ["masked"]
    transfers = [(eps, m.rename_axis("source (crafted on)").reset_index(), png) for eps, m, png in r.transfers]
    return {
        "pop_corr": corr[corr["x"] != UNCONVERGED], "uc_corr": corr[corr["x"] == UNCONVERGED],
        "front": r.trials[r.trials["pareto"]],
        "value_tables": {p: r.values[r.values["param"] == p] for p in dict.fromkeys(r.values["param"])},
        "audit_cols": audit_cols, "transfers": transfers,
    }  # fmt: skip
