"""The `hebbrobust` command line: a thin Typer layer over the library. The only typer/rich importer.

Library errors (HebbrobustError) become one red line and exit code 1; --debug shows the traceback.
"""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn
from rich.table import Table

from hebbrobust.errors import HebbrobustError

app = typer.Typer(
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
    help="Studies of a local (Krotov-Hopfield) learning rule against backprop: clean accuracy x adversarial "
    "robustness, on Ray Tune + Optuna + MLflow. Start with: hebbrobust study run studies/quickstart.yaml",
)
trial_app = typer.Typer(no_args_is_help=True, help="Train and measure one model.")
study_app = typer.Typer(no_args_is_help=True, help="Multi-objective studies on Ray Tune + Optuna + MLflow.")
cache_app = typer.Typer(no_args_is_help=True, help="The shared filter cache.")
app.add_typer(trial_app, name="trial")
app.add_typer(study_app, name="study")
app.add_typer(cache_app, name="cache")

out = Console()
err = Console(stderr=True)
for _console in (out, err):
    if not _console.is_terminal:  # logs and pipes: wide lines, no wrapping mid-table
        _console.width = 200
_state = {"debug": False}
F = TypeVar("F", bound=Callable[..., Any])

SetOpt = Annotated[
    list[str] | None, typer.Option("--set", "-s", help="override a spec value: dotted.key=value (repeatable)")
]
# not exists=True: a missing or unreadable spec is a one-line error (exit 1) like any other bad spec
SpecArg = Annotated[Path, typer.Argument(help="study/trial spec (YAML)")]


@app.callback()
def main(debug: Annotated[bool, typer.Option("--debug", help="show tracebacks")] = False) -> None:
    _state["debug"] = debug
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")


def friendly(fn: F) -> F:
    """Turn library errors into one red line and exit 1 (traceback with --debug)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except HebbrobustError as e:
            if _state["debug"]:
                raise
            err.print(f"[red]error:[/red] {e}", highlight=False, soft_wrap=True)
            raise typer.Exit(1) from None

    return wrapper  # type: ignore[return-value]


class EpochBar:
    """A rich progress bar fed by the library's on_epoch(stage, epoch, total, metrics) callback."""

    def __init__(self, progress: Progress) -> None:
        self.progress = progress
        self.tasks: dict[str, TaskID] = {}

    def __call__(self, stage: str, epoch: int, total: int, metrics: dict[str, float]) -> None:
        if stage not in self.tasks:
            self.tasks[stage] = self.progress.add_task(stage, total=total)
        shown = "  ".join(f"{k}={v:.4g}" for k, v in metrics.items() if k != "lr")
        self.progress.update(self.tasks[stage], completed=epoch, description=f"{stage:8s} {shown}")
        if not self.progress.console.is_terminal:  # logs: one plain line per epoch
            self.progress.console.print(f"{stage} {epoch}/{total} {shown}", highlight=False)


def _progress() -> Progress:
    return Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        console=err, transient=False,
    )


def _metrics_table(metrics: dict[str, Any], title: str) -> Table:
    table = Table(title=title, show_header=False)
    for key, value in metrics.items():
        if isinstance(value, float):
            value = f"{value:.4g}"
        style = "red" if key.startswith("mask_") and key.endswith("_ok") and not value else None
        table.add_row(key, str(value), style=style)
    return table


@trial_app.command("run")
@friendly
def trial_run(
    spec: SpecArg,
    out_dir: Annotated[Path, typer.Option("--out", "-o", help="directory for metrics.json, filters.png, model.pt")],
    set_: SetOpt = None,
    filter_cache: Annotated[
        Path | None, typer.Option("--filter-cache", help="share trained filters through this cache directory")
    ] = None,
) -> None:
    """Train and measure the spec's base trial (its search space is ignored). Every epoch is
    checkpointed under OUT/checkpoints: rerunning the same command resumes a cut-off run."""
    from hebbrobust.config import check_data_path, load_trial
    from hebbrobust.trial import run_trial, save_trial

    config = load_trial(spec, set_ or [])
    check_data_path(spec, "base.data", config.data)
    with _progress() as progress:
        result = run_trial(
            config, on_epoch=EpochBar(progress), filter_cache=filter_cache, checkpoint_dir=out_dir / "checkpoints"
        )
    paths = save_trial(result, out_dir)
    shown = {k: v for k, v in result.metrics.items() if not isinstance(v, list | dict)}
    out.print(_metrics_table(shown, f"{config.model.kind} model on {config.data.name}"))
    _warn_masking(result.metrics)
    if result.metrics.get("gated"):
        err.print(f"[yellow]{result.metrics.get('gated_reason')}[/yellow]: no head was trained")
    out.print(f"wrote {', '.join(str(p) for p in paths.values() if p.exists())}")


def _warn_masking(metrics: dict[str, Any]) -> None:
    failed = [k for k, v in metrics.items() if k.startswith("mask_") and k.endswith("_ok") and v is not None and not v]
    if failed:
        err.print(f"[yellow]warning:[/yellow] gradient-masking checks failed: {', '.join(failed)}")


@app.command("evaluate")
@friendly
def evaluate_cmd(
    trial_dir: Annotated[Path, typer.Argument(help="a directory written by `trial run`", exists=True, file_okay=False)],
    eps: Annotated[
        list[float] | None, typer.Option("--eps", help="L-inf eps in units of 1/255 (repeatable)")
    ] = None,
    attack: Annotated[str | None, typer.Option("--attack", help="fgsm or pgd (default: both)")] = None,
    n_images: Annotated[int | None, typer.Option("--n-images", help="test images to attack")] = None,
    audit: Annotated[
        list[str] | None,
        typer.Option("--audit", help="also run this audit attack (apgd-ce, apgd-dlr, square; repeatable): "
                     "per-eps accuracies and worst_acc over all attacks"),
    ] = None,
) -> None:
    """Re-evaluate a saved trial's robustness; updates its metrics.json, robustness.png and adversarial.png."""
    from hebbrobust.trial import reevaluate

    if attack not in (None, "fgsm", "pgd"):
        raise HebbrobustError(f"--attack: must be fgsm or pgd, got {attack!r}")
    with _progress() as progress:
        metrics = reevaluate(
            trial_dir, eps=eps, attack=attack, n_images=n_images, audit_attacks=audit, on_step=EpochBar(progress)
        )
    out.print(_metrics_table(metrics, f"robustness of {trial_dir}"))
    _warn_masking(metrics)


@app.command("transfer")
@friendly
def transfer_cmd(
    trial_dirs: Annotated[
        list[Path], typer.Argument(help="directories written by `trial run`, same data", exists=True, file_okay=False)
    ],
    eps: Annotated[float, typer.Option("--eps", help="L-inf eps in units of 1/255")] = 8.0,
    out_dir: Annotated[Path, typer.Option("--out", "-o", help="where transfer.csv and transfer.png go")] = Path("."),
    n_images: Annotated[int | None, typer.Option("--n-images", help="test images (default: the first trial's)")] = None,
) -> None:
    """PGD examples crafted on each trial's model, evaluated on every other: source x target robust accuracy."""
    from hebbrobust.trial import transfer_dirs

    with _progress() as progress:
        matrix, fig = transfer_dirs(trial_dirs, eps=eps, n_images=n_images, on_step=EpochBar(progress))
    out_dir.mkdir(parents=True, exist_ok=True)
    matrix.to_csv(out_dir / "transfer.csv")
    fig.savefig(out_dir / "transfer.png", dpi=100)
    _print_matrix(matrix, eps)
    out.print(f"wrote {out_dir / 'transfer.csv'}, {out_dir / 'transfer.png'}")


def _print_matrix(matrix: Any, eps: float) -> None:
    table = Table(title=f"robust accuracy, rows: source (PGD crafted on), columns: target, eps {eps:g}/255")
    table.add_column("source")
    for col in matrix.columns:
        table.add_column(str(col))
    for src, row in matrix.iterrows():
        table.add_row(str(src), *(f"{v:.3f}" for v in row))
    out.print(table)


# --------------------------------------------------------------------------- study

AddressOpt = Annotated[
    str | None, typer.Option("--address", help="join this Ray cluster (default: $RAY_ADDRESS, else a local Ray)")
]
STUDY_HELP = "study name, directory, or a storage root holding one study (default: --storage's one study)"
StorageOpt = Annotated[
    Path | None, typer.Option("--storage", help="study directories root (default ./hebbrobust-studies)")
]


class StudyBar:
    """Renders the study's progress (trials done/running/failed, best values so far)."""

    def __init__(self, progress: Progress) -> None:
        self.progress = progress
        self.task: TaskID | None = None

    def __call__(self, p: Any) -> None:
        best = "  ".join(f"{k}={v:.4g}" for k, v in p.best.items() if v is not None)
        stopped = getattr(p, "stopped", 0)
        text = f"{p.name}: {p.running} running  {p.failed} failed  {getattr(p, 'gated', 0)} gated  "
        text += (f"{stopped} stopped  " if stopped else "") + f"{p.cache_hits} filter-cache hits  best {best}"
        ended = p.done + p.failed + stopped
        if self.task is None:
            self.task = self.progress.add_task(text, total=p.total)
        self.progress.update(self.task, completed=ended, description=text)
        if not self.progress.console.is_terminal:
            self.progress.console.print(f"{ended}/{p.total} done  {text}", highlight=False)


def _print_outcome(outcome: Any) -> None:
    if outcome.interrupted:  # Ctrl+C: one line with the way on, exit 130 (the shell's code for SIGINT)
        err.print(
            f"[yellow]interrupted:[/yellow] continue with `hebbrobust study resume {outcome.study_dir}`",
            soft_wrap=True, highlight=False,
        )  # fmt: skip
        raise typer.Exit(130)
    front = outcome.front
    finished = outcome.counts.get("finished", 0)
    table = Table(title=f"Pareto front of {outcome.name} ({len(front)} of {finished} finished trials)")
    cols = outcome.front_columns
    for col in cols:
        table.add_column(col)
    for _, row in front[cols].iterrows():
        table.add_row(*(f"{v:.4g}" if isinstance(v, float) else str(v) for v in row))
    out.print(table)
    c = outcome.counts
    out.print(
        f"trials: {c.get('finished', 0)} finished, {c.get('gated', 0)} gated, {c.get('failed', 0)} failed, "
        + (f"{c['stopped']} stopped at a rung, " if c.get("stopped") else "")
        + f"{c.get('unfinished', 0)} unfinished; front hypervolume {getattr(outcome, 'hypervolume', 0.0):.4g}"
        + (f"; wall {outcome.wall_seconds:.0f} s" if outcome.wall_seconds else "")
    )
    r = getattr(outcome, "resumed", None)
    if r:
        out.print(
            f"resumed: {r['closed_runs']} cut-off runs closed KILLED, {r['recovered']} trials recovered from MLflow, "
            f"{r['cut_off']} run again, {r.get('disk_full', 0)} failed on a full disk run again, "
            f"{r['remaining']} still to run at the start"
        )
    out.print(f"study dir:  {outcome.study_dir}")
    out.print(f"MLflow:     {outcome.tracking_uri}  experiment {outcome.experiment!r}")
    out.print(f"            parent run {outcome.parent_run_id}")
    out.print(f"            {outcome.mlflow_ui_command}")
    out.print(f"Optuna:     optuna-dashboard {outcome.optuna_storage}")


@study_app.command("run")
@friendly
def study_run(
    spec: SpecArg,
    address: AddressOpt = None,
    num_trials: Annotated[int | None, typer.Option("--num-trials", "-n", help="override num_trials")] = None,
    tracking_uri: Annotated[
        str | None, typer.Option("--tracking-uri", help="MLflow URI (default sqlite ./mlflow.db)")
    ] = None,
    storage: StorageOpt = None,
    set_: SetOpt = None,
) -> None:
    """Run a multi-objective study: Ray Tune schedules, Optuna searches, MLflow records."""
    from hebbrobust.config import load_study
    from hebbrobust.study import run_study

    sets = (set_ or []) + ([f"num_trials={num_trials}"] if num_trials is not None else [])
    study = load_study(spec, sets)
    with _progress() as progress:
        outcome = run_study(
            study, spec_path=spec, address=address, storage=storage, tracking_uri=tracking_uri,
            on_progress=StudyBar(progress),
        )
    _print_outcome(outcome)


@study_app.command("resume")
@friendly
def study_resume(
    study_dir: Annotated[Path | None, typer.Argument(help=STUDY_HELP)] = None,
    address: AddressOpt = None,
    storage: StorageOpt = None,
) -> None:
    """Continue an interrupted study: no trial lost, none duplicated."""
    from hebbrobust.study import find_study_dir, resume_study

    with _progress() as progress:
        outcome = resume_study(find_study_dir(study_dir, storage), address=address, on_progress=StudyBar(progress))
    _print_outcome(outcome)


@study_app.command("repair")
@friendly
def study_repair(
    study_dir: Annotated[Path, typer.Argument(help="the study directory (it holds spec.yaml)")],
    tracking_uri: Annotated[
        str | None, typer.Option("--tracking-uri", help="the MLflow store holding its runs (default: the study's)")
    ] = None,
) -> None:
    """Rebuild a damaged study.json or optuna.db from spec.yaml and the trial runs in MLflow."""
    from hebbrobust.study.repair import repair_study

    done = repair_study(study_dir, tracking_uri=tracking_uri)
    if not done.rebuilt:
        out.print(f"{study_dir}: nothing damaged, nothing rebuilt")
        return
    out.print(f"rebuilt {', '.join(done.rebuilt)} in {study_dir}")
    if "optuna.db" in done.rebuilt:
        out.print(f"Optuna trials from MLflow: {done.complete} complete, {done.failed} failed, "
                  f"{done.rerun} cut off (run again on resume), {done.skipped} skipped (no longer in the space)")
    for path in done.moved_aside:
        out.print(f"damaged file kept as {path}")
    out.print(f"continue with `hebbrobust study resume {study_dir}`")


@study_app.command("list")
@friendly
def study_list(storage: StorageOpt = None) -> None:
    """Studies under the storage root with their trial counts."""
    from hebbrobust.study import list_studies

    df = list_studies(storage)
    if df.empty:
        out.print("no studies yet")
        return
    table = Table()
    cols = [c for c in ("name", "num_trials", "complete", "failed", "running", "sampler", "study_dir") if c in df]
    for col in cols:
        table.add_column(col)
    for _, row in df[cols].iterrows():
        table.add_row(*(str(v) for v in row))
    out.print(table)


@study_app.command("show")
@friendly
def study_show(
    name: Annotated[str | None, typer.Argument(help=STUDY_HELP)] = None, storage: StorageOpt = None
) -> None:
    """A study's counts, front and where everything is."""
    from hebbrobust.study import show_study

    _print_outcome(show_study(name, storage=storage))


@study_app.command("report")
@friendly
def study_report(
    name: Annotated[str | None, typer.Argument(help=STUDY_HELP)] = None,
    out_dir: Annotated[Path | None, typer.Option("--out", "-o", help="default: <study dir>/report")] = None,
    storage: StorageOpt = None,
    tracking_uri: Annotated[
        str | None, typer.Option("--tracking-uri", help="read the runs from this MLflow store (default: the study's)")
    ] = None,
    fmt: Annotated[str, typer.Option("--format", help="html (self-contained page) or md")] = "html",
) -> None:
    """Pareto front, importances, effects, front filters and correlations as one page, CSVs and PNGs."""
    from hebbrobust.report import build_report
    from hebbrobust.study import find_study_dir

    rep = build_report(find_study_dir(name, storage), out_dir=out_dir, fmt=fmt, tracking_uri=tracking_uri)
    c, front = rep.counts, int(rep.trials["pareto"].sum())
    out.print(f"{rep.study.name}: {c['finished']} finished trials, {c['failed']} failed; {front} on the Pareto front")
    for note in rep.notes:
        err.print(f"[yellow]note:[/yellow] {note}", highlight=False)
    out.print(f"wrote {len(rep.files)} files to {rep.out_dir}; open {rep.out_dir / f'report.{fmt}'}")
    out.print(f"logged to MLflow run {rep.study.parent_run_id}: {rep.artifact_uri}")


MembersOpt = Annotated[
    str, typer.Option("--members", help="front, all, top-N (best first objective) or trial ids, comma-separated")
]


@study_app.command("audit")
@friendly
def study_audit(
    name: Annotated[str | None, typer.Argument(help=STUDY_HELP)] = None,
    members: MembersOpt = "front",
    attacks: Annotated[
        list[str] | None,
        typer.Option("--attacks", help="audit attack (apgd-ce, apgd-dlr, square; repeatable; default: all)"),
    ] = None,
    n_images: Annotated[int | None, typer.Option("--n-images", help="test images (default: each trial's)")] = None,
    storage: StorageOpt = None,
) -> None:
    """Audit chosen trials of a finished study: ours vs worst-case robust accuracy; logs to MLflow."""
    from hebbrobust.study.audit import audit_study

    with _progress() as progress:
        done = audit_study(name, members=members, attacks=attacks, n_images=n_images, storage=storage,
                           on_step=EpochBar(progress))  # fmt: skip
    table = Table(title=f"{done.record.name}: our PGD vs the worst case over every attack")
    for col in done.table.columns:
        table.add_column(str(col))
    for _, row in done.table.iterrows():
        table.add_row(*(f"{v:.3f}" if isinstance(v, float) else str(v) for v in row))
    out.print(table)
    for trial in done.table[done.table["masked"]]["trial_id"].unique():
        err.print(f"[yellow]warning:[/yellow] {trial}: our PGD overestimates robust accuracy by more than 2 points")
    out.print(f"wrote {done.files['audit.csv']}; `hebbrobust study report {done.record.name}` shows it")


@study_app.command("transfer")
@friendly
def study_transfer(
    name: Annotated[str | None, typer.Argument(help=STUDY_HELP)] = None,
    members: MembersOpt = "front",
    eps: Annotated[float, typer.Option("--eps", help="L-inf eps in units of 1/255")] = 8.0,
    n_images: Annotated[int | None, typer.Option("--n-images", help="test images (default: the first trial's)")] = None,
    storage: StorageOpt = None,
) -> None:
    """PGD transfer matrix of chosen trials of a finished study; CSV + heatmap on the parent run."""
    from hebbrobust.study.audit import transfer_study

    with _progress() as progress:
        done = transfer_study(name, members=members, eps=eps, n_images=n_images, storage=storage,
                              on_step=EpochBar(progress))  # fmt: skip
    _print_matrix(done.table, eps)
    out.print(f"wrote {', '.join(str(p) for p in done.files.values())}")
@study_app.command("compare")
@friendly
def study_compare(
    studies: Annotated[list[str], typer.Argument(help="two or more study names or directories")],
    out_dir: Annotated[Path, typer.Option("--out", "-o", help="where the comparison is written")],
    storage: StorageOpt = None,
    tracking_uri: Annotated[
        str | None, typer.Option("--tracking-uri", help="read the runs from this MLflow store (default: each study's)")
    ] = None,
) -> None:
    """Fronts overlaid, hypervolume histories side by side and a table of the studies (HTML/MD/CSV, MLflow)."""
    from hebbrobust.compare import compare_studies
    from hebbrobust.study import find_study_dir

    c = compare_studies([find_study_dir(s, storage) for s in studies], out_dir, tracking_uri=tracking_uri)
    table = Table(title="study comparison")
    cols = [col for col in c.table.columns if col not in ("planned",)]
    for col in cols:
        table.add_column(col)
    for _, row in c.table[cols].iterrows():
        table.add_row(*(f"{v:.4g}" if isinstance(v, float) else str(v) for v in row))
    out.print(table)
    out.print(f"wrote {len(c.files)} files to {c.out_dir}; open {c.out_dir / 'compare.html'}")
    if c.run_id:
        out.print(f"logged to MLflow run {c.run_id} (experiment hebbrobust-compare, {c.tracking_uri})")


# --------------------------------------------------------------------------- cache


@cache_app.command("list")
@friendly
def cache_list(
    cache_dir: Annotated[
        Path | None, typer.Argument(help="a filter-cache directory (default: the caches of the studies in --storage)")
    ] = None,
    storage: StorageOpt = None,
) -> None:
    """Entries of a filter cache and of its pooled-feature cache: key, size, settings."""
    from hebbrobust.cache import list_entries, list_feature_entries
    from hebbrobust.study.record import filter_caches

    cols = ("key", "bytes", "train_seconds", "data", "filters", "kernel", "p", "k", "delta", "epochs", "seed")
    fcols = ("key", "bytes", "seconds", "filter_set", "pool", "pool_stride", "dtype", "shape")
    for where in [cache_dir] if cache_dir is not None else filter_caches(storage):
        rows, frows = list_entries(where), list_feature_entries(where)
        _print_rows(f"{where}: {len(rows)} filter sets, {sum(r['bytes'] for r in rows) / 1e6:.1f} MB", cols, rows)
        if frows:
            mb = sum(r["bytes"] for r in frows) / 1e6
            _print_rows(f"{where}/features: {len(frows)} pooled-feature sets, {mb:.1f} MB", fcols, frows)


def _print_rows(title: str, cols: tuple[str, ...], rows: list[dict[str, Any]]) -> None:
    table = Table(title=title)
    for col in cols:
        table.add_column(col)
    for r in rows:
        table.add_row(*(f"{r[c]:.4g}" if isinstance(r[c], float) else str(r[c]) for c in cols))
    out.print(table)


@cache_app.command("clear")
@friendly
def cache_clear(
    cache_dir: Annotated[Path, typer.Argument(help="a filter-cache directory")],
    older_than: Annotated[
        float | None, typer.Option("--older-than", help="only entries older than this many days")
    ] = None,
) -> None:
    """Remove filter-cache entries (all, or those older than --older-than days)."""
    from hebbrobust.cache import clear

    removed = clear(cache_dir, None if older_than is None else older_than * 86400)
    out.print(f"removed {removed} entries from {cache_dir}")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())


