"""The ``ablab`` command line: one handler per subcommand (``cmd_*``), composed here from the detector, the
platform and the dashboards. Heavy modules are imported inside the handlers, so ``ablab validate`` never
pays for torch or Ray."""
from __future__ import annotations

import argparse
import sys
import traceback
from typing import Callable, Optional

from detector.config import ConfigError, parse_sets
from detector.data import DatasetError

from .logs import log, setup_logging
from .naming import launch_args

USER_ERRORS = (ConfigError, DatasetError, OSError)
"""Bad input or an environment that refuses it (a missing, read-only or full path): exit 2 and one line.
Anything else is a bug in ablab: its traceback, then a line saying so."""


def cmd_data_synthetic(args) -> int:
    from pydantic import ValidationError

    from detector.config import SyntheticConfig
    from detector.data import write_synthetic

    given = {k: getattr(args, k) for k in SYNTHETIC_FLAGS if getattr(args, k) is not None}
    try:  # the flags are checked as the config's data.synthetic is; the rest are its defaults
        params = SyntheticConfig(**given).model_dump()
    except ValidationError as err:
        e = err.errors()[0]
        raise ConfigError(f"--{str(e['loc'][0]).replace('_', '-')}: {e['msg']} (got {e['input']!r})") from None
    root = write_synthetic(args.out, **params, progress=lambda m: print(f"[data] {m}", file=sys.stderr, flush=True))
    print(f"synthetic dataset written to {root} ({params['train']} train / {params['val']} val, {params['size']}px, "
          f"seed {params['seed']}, generator {params['generator']}: occlusion {params['occlusion']:g}, edge blur "
          f"{params['edge_blur']:g}, truncation {params['truncation']:g})")
    return 0


SYNTHETIC_FLAGS = {"train": int, "val": int, "size": int, "seed": int, "occlusion": float, "edge_blur": float,
                   "truncation": float}
"""``ablab data synthetic``'s flags: data.synthetic's fields (detector.config.SyntheticConfig holds the defaults)."""


def cmd_train(args) -> int:
    from . import single

    return single.train_command(args.config, args.out, args.overrides)


def cmd_evaluate(args) -> int:
    from . import single

    return single.evaluate_command(args.config, args.checkpoint, args.variants, args.convention, args.out,
                                   args.overrides)


def _launch(args):
    """The launch a study command names: its study file, --profile and --set (launch.open_launch)."""
    from .launch import open_launch

    return open_launch(args.study, args.profile, args.overrides)


def cmd_validate(args) -> int:
    from .launch import plan_study
    from .paths import resolve_tracking_uri
    from .runner import preflight

    plan = plan_study(_launch(args), args.out_root, allow_large_grid=args.allow_large_grid, seeds=args.seeds)
    preflight(plan, args.address, resolve_tracking_uri(plan.study.study, args.tracking_uri, args.out_root),
              explicit_uri=bool(args.tracking_uri), create=False)
    print(f"{args.study}: valid; {plan.args}: {len(plan.points)} trials, "
          f"{len(plan.study.variant_configs()) or 1} variants; data found; outputs -> {plan.out_dir}")
    return 0


def cmd_plan(args) -> int:
    from .estimate import plan_command

    return plan_command(_launch(args), args.address, args.seeds, args.gpu_throughput, args.throughput_table)


def cmd_show(args) -> int:
    from .provenance import PROFILE, show_lines
    from .study import load_study

    if args.profile != PROFILE:
        raise ConfigError(f"--profile {args.profile}: the provenance records describe the {PROFILE!r} profile only")
    print("\n".join(show_lines(load_study(args.study))))
    return 0


def cmd_run(args) -> int:
    from .runner import run_study

    outcome = run_study(_launch(args), args.address, args.tracking_uri, args.out_root,
                        resume=args.command == "resume", allow_large_grid=args.allow_large_grid,
                        retry_failed=getattr(args, "retry_failed", False), seeds=getattr(args, "seeds", None))
    if outcome.interrupted:
        return 130  # as a shell reports Ctrl-C; the report waits for the resumed study
    if outcome.tracking_pending:
        return 1  # the results are on disk, not all in MLflow: `ablab sync` (the log says so)
    try:
        _report(args, outcome.tracking_uri)
    except Exception as err:  # the study's results are safe in MLflow; `ablab report` can retry
        log.warning("the report was not built (%s: %s); retry with `ablab report %s %s`",
                    type(err).__name__, err, args.study, launch_args(args.profile, parse_sets(args.overrides)))
    return 1 if outcome.failed else 0


def cmd_doctor(args) -> int:
    from .doctor import doctor

    return doctor()


def cmd_sync(args) -> int:
    from .runner import sync_study

    return 1 if sync_study(_launch(args), args.tracking_uri, args.out_root) else 0


def cmd_submit(args) -> int:
    from .preflight import check_job_server
    from .submit import submit

    check_job_server(args.address)  # before the study is read: a wrong address is the first thing to say
    return submit(_launch(args), args.address, args.tracking_uri, args.working_dir, args.pip, args.wait,
                  args.allow_large_grid, args.seeds)


def cmd_results(args) -> int:
    from .paths import browse_lines, resolve_tracking_uri, results_root
    from .query import results, study_id_of
    from .store import experiment_id

    study = study_id_of(args.study)
    out_root = results_root(study, args.out_root)
    df = results(study, profile=args.profile, tracking_uri=args.tracking_uri, out_root=out_root,
                 overrides=args.overrides)
    if args.parquet:
        df.to_parquet(args.parquet, index=False)
        print(f"wrote {len(df)} rows to {args.parquet}")
    if args.csv:
        df.to_csv(args.csv, index=False)
        print(f"wrote {len(df)} rows to {args.csv}")
    if not (args.parquet or args.csv):
        cols = [c for c in ("trial", "seed", "variant", "status", "AP", "AP50", "AP75", "AP90", "mAP") if c in df]
        print(df[cols].to_string(index=False))
    uri = resolve_tracking_uri(study, args.tracking_uri, out_root)
    print("\n".join(browse_lines(uri, experiment_id(uri, study))))
    return 0


def cmd_table(args) -> int:
    from .query import launch_results
    from .table import effects_text, table_text

    launch = _launch(args)
    if launch.study.table_layout is None:
        flag = "--effects: " if args.effects else ""
        raise ConfigError(f"{args.study}: {flag}the study has no layout (its rows are what a table shows and effects "
                          f"compare); `ablab results {args.study} {launch.args}` lists its runs")
    read = launch_results(launch, args.tracking_uri, args.out_root)
    if read.results.empty:
        what = f"{launch.args} (a launch is named by its profile and its --set)" if launch.sets else \
            f"profile {args.profile!r}"
        raise ConfigError(f"{args.study}: no runs of {what} in MLflow yet; `ablab run {args.study} {launch.args}` "
                          f"makes them")
    if args.effects:
        if args.format == "latex":
            raise ConfigError("--effects: prints md, csv or html (not latex)")
        print(effects_text(launch, read.results, args.format), end="")
        return 0
    print(table_text(launch, read.results, args.format), end="")
    return 0


def cmd_report(args) -> int:
    _report(args)
    return 0


REPORTS = "ablab.reports"
"""The entry-point group of report builders (pyproject.toml): ``build(launch, tracking_uri, out_root, folder)``."""


def _report(args, tracking_uri: Optional[str] = None) -> None:
    from importlib import import_module
    from importlib.metadata import entry_points

    builders = entry_points(group=REPORTS, name="html")
    # A checkout that is not installed (a Ray job's working dir on a cluster) has no entry points: its own
    # dashboards package, on the path, builds it.
    build = next(iter(builders)).load() if builders else import_module("dashboards.report").build_report
    build(_launch(args), tracking_uri or args.tracking_uri, args.out_root, getattr(args, "dashboards", None))


SET_HELP = ("override a config field of every trial, after the profile and the trials' own `set`, so it wins "
            "(repeatable; VALUE is YAML: --set train.steps=[8,11]). The overrides name the launch with the profile: "
            "its folder is <out-root>/<study>/<profile>+set-<digest> and its runs' ablab.profile tag the same, so a "
            "trial trained with them is never resumed, skipped or tabulated as one trained without; resume, sync, "
            "table, results and report take the same --set to find it")


def _add_set(parser: argparse.ArgumentParser, text: str = SET_HELP) -> None:
    """``--set KEY=VALUE`` (repeatable), parsed by detector.config.parse_sets wherever it is used."""
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help=text)


def _command(sub, name: str, handler: Callable, text: str) -> argparse.ArgumentParser:
    parser = sub.add_parser(name, help=text)
    parser.set_defaults(handler=handler)
    return parser


def _single_process_commands(sub) -> None:
    data = sub.add_parser("data", help="datasets").add_subparsers(dest="data_command", required=True)
    syn = _command(data, "synthetic", cmd_data_synthetic, "write the synthetic COCO/VOC dataset")
    syn.add_argument("--out", required=True)
    for name, kind in SYNTHETIC_FLAGS.items():
        syn.add_argument(f"--{name.replace('_', '-')}", dest=name, type=kind, help=f"data.synthetic.{name}")

    _command(sub, "doctor", cmd_doctor, "this machine's fitness for studies: CPU and the precision auto picks, torch "
                                        "and CUDA, Ray, MLflow, the report browser, data roots, disk")

    tr = _command(sub, "train", cmd_train, "train and evaluate one config in this process (no Ray, no MLflow)")
    tr.add_argument("config")
    tr.add_argument("--out", help="output folder (default runs/<config name>)")
    _add_set(tr, "override a config field (repeatable; VALUE is YAML), e.g. --set train.epochs=2")

    ev = _command(sub, "evaluate", cmd_evaluate, "evaluate a checkpoint under any inference variants, from one pass")
    ev.add_argument("config")
    ev.add_argument("--checkpoint", required=True)
    ev.add_argument("--variants", nargs="*", default=[],
                    help="names from the config, or cls | none | alpha=A [,truth] [,q>0.5]")
    ev.add_argument("--convention", choices=["iou_aware", "conf"], default="iou_aware",
                    help="what alpha weighs: iou_aware (paper 000) p^a q^(1-a); conf (paper 004) q^a p^(1-a)")
    ev.add_argument("--out")
    _add_set(ev, "override a config field (repeatable; VALUE is YAML), e.g. --set inference.nms_iou=0.6")


def _run_commands(sub) -> None:
    for name, handler, text in (
            ("validate", cmd_validate, "check a study, its trial configs, data, weights, addresses and output "
                                       "folder as `run` would, without running"),
            ("run", cmd_run, "run a study on Ray (embedded local cluster unless --address)"),
            ("resume", cmd_run, "finish an interrupted study (finished trials are not re-run); "
                                "--retry-failed runs the failed ones again")):
        r = _command(sub, name, handler, text)
        r.add_argument("study")
        r.add_argument("--profile", default="smoke")
        r.add_argument("--address", help="Ray cluster address (default $RAY_ADDRESS, else an embedded local cluster)")
        r.add_argument("--tracking-uri", help="MLflow tracking URI (default $MLFLOW_TRACKING_URI, else SQLite in the output dir)")
        r.add_argument("--out-root", help="where study outputs go (default $ABLAB_OUTPUT_ROOT or ./outputs)")
        r.add_argument("--allow-large-grid", action="store_true",
                       help="run a grid of more than 10,000 trials (refused otherwise, as a likely typo)")
        if name != "resume":  # a resume keeps the seeds its launch ran
            r.add_argument("--seeds", type=int, metavar="N", help="train every trial with seeds 0..N-1 instead of "
                                                                  "the study's `seeds`")
        if name == "resume":
            r.add_argument("--retry-failed", action="store_true",
                           help="run the failed trials again (from their last checkpoint), in their MLflow runs")
            _add_set(r, "the --set of the launch to resume, as it was run (none: the profile's launch without "
                        "overrides); its finished trials were trained with exactly those")
        else:
            _add_set(r)


def _plan_and_job_commands(sub) -> None:
    pl = _command(sub, "plan", cmd_plan, "what a study will cost before it runs: its trials, what each needs, the "
                                         "concurrency, and the wall time and CPU-/GPU-hours from a short benchmark")
    pl.add_argument("study")
    pl.add_argument("--profile", default="smoke")
    pl.add_argument("--address", help="Ray cluster whose resources set the concurrency (default $RAY_ADDRESS, else "
                                      "this machine as the embedded cluster sees it)")
    pl.add_argument("--seeds", type=int, metavar="N", help="as for `ablab run`")
    _add_set(pl, "as for `ablab run`: the launch it will cost")
    pl.add_argument("--gpu-throughput", type=float, metavar="IMAGES_PER_S",
                    help="a GPU profile's training images/s per GPU at its image size, instead of the table's")
    pl.add_argument("--throughput-table", metavar="FILE", help="per-GPU throughput table to use instead of "
                                                               "studies/profiles/gpu_throughput.yaml")

    sh = _command(sub, "show", cmd_show, "a study's paper profile resolved, each setting with its source: the paper, "
                                         "the authors' config, or ours with the reason (studies/profiles/provenance/)")
    sh.add_argument("study")
    sh.add_argument("--profile", default="paper", help="the profile to show: paper (the one the records describe)")

    sy = _command(sub, "sync", cmd_sync, "write to MLflow what a study could not log while its store was down "
                                         "(the study's journal); no Ray")
    sy.add_argument("study")
    sy.add_argument("--profile", default="smoke")
    sy.add_argument("--tracking-uri", help="MLflow URI to write to (default: the launch's, from launch.json)")
    sy.add_argument("--out-root", help="as for `ablab run`")
    _add_set(sy, "the --set of the launch to sync, as it was run")

    sb = _command(sub, "submit", cmd_submit, "submit `ablab run` as a Ray job with the runtime env filled in")
    sb.add_argument("study")
    sb.add_argument("--address", required=True, help="Ray dashboard address, e.g. http://HEAD:8265")
    sb.add_argument("--profile", default="smoke")
    sb.add_argument("--tracking-uri", help="MLflow URI the job logs to (default $MLFLOW_TRACKING_URI)")
    sb.add_argument("--working-dir", default=".")
    sb.add_argument("--pip", action="append", default=[], help="extra pip requirement for the job's runtime env")
    sb.add_argument("--wait", action="store_true", help="wait for the job and print its logs")
    sb.add_argument("--allow-large-grid", action="store_true", help="as for `ablab run`")
    sb.add_argument("--seeds", type=int, metavar="N", help="as for `ablab run`")
    _add_set(sb, "as for `ablab run` (checked here, then passed on to the job's `ablab run`)")


def _query_commands(sub) -> None:
    rs = _command(sub, "results", cmd_results, "a study's results from MLflow: print, or write Parquet/CSV")
    rs.add_argument("--parquet", help="write the DataFrame to this Parquet file")
    rs.add_argument("--csv", help="write the DataFrame to this CSV file")
    tb = _command(sub, "table", cmd_table, "the paper's table rebuilt from MLflow, ours (with its 95%% interval) beside the "
                  "paper's; then (md, html) each claim of the paper with its verdict")
    tb.add_argument("--format", choices=["md", "csv", "html", "latex"], default="md")
    tb.add_argument("--effects", action="store_true", help="each change against its baseline instead: ours (row - "
                                                           "baseline) [95%% interval] / the paper's, with verdicts")
    rp = _command(sub, "report", cmd_report, "plots + one HTML page per study (and an index), built from MLflow")
    rp.add_argument("--dashboards", help="folder for the pages (default <out-root>/dashboards)")
    for parser in (rs, tb, rp):
        parser.add_argument("study")
        parser.add_argument("--profile", default=None if parser is rs else "smoke")
        parser.add_argument("--tracking-uri")
        parser.add_argument("--out-root")
        _add_set(parser, "the --set of the launch to read, as it was run (none: the profile's launch without "
                         "overrides)")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ablab", description="Ablation studies of quality-aware single-stage detectors.")
    sub = p.add_subparsers(dest="command", required=True)
    _single_process_commands(sub)
    _run_commands(sub)
    _plan_and_job_commands(sub)
    _query_commands(sub)
    return p


def main(argv: Optional[list[str]] = None) -> int:
    args = _parser().parse_args(argv)
    setup_logging()
    try:
        return args.handler(args)
    except USER_ERRORS as err:
        print(f"ablab: error: {_one_line(err)}", file=sys.stderr)
        return 2
    except Exception:
        traceback.print_exc()
        print("ablab: internal error: this is a bug in ablab, not in your input; please report it with the "
              "traceback above", file=sys.stderr)
        return 1


def _one_line(err: BaseException) -> str:
    if isinstance(err, OSError) and err.filename is not None and err.strerror:
        return f"{err.filename}: {err.strerror}"  # e.g. "/data/out: Read-only file system"
    return " ".join(str(err).split())


if __name__ == "__main__":
    sys.exit(main())
