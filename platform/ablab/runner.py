"""Running a launch: its plan (ablab.launch: every config checked), the checks of where it runs and logs, the
cluster (ablab.cluster), the grid on Ray Tune (each trial training in its own process, or on a Ray Train
TorchTrainer's workers: trial.py), mirrored into MLflow from this (driver) process (tracking.py), and its summary;
and `ablab sync`."""
from __future__ import annotations

import errno
import json
import os
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from detector.config import ConfigError

from .cluster import ray_temp, start_ray
from .estimate import RunEstimate
from .evidence import claims_frame, verdict_text
from .launch import Launch, Plan, plan_study
from .paths import adopt_credentials, browse_lines, in_ray_job, resolve_tracking_uri
from .preflight import (check_embedded_resources, check_output_dir, check_ray_address, check_tracking_uri,
                        probe_tracking_server)
from .journal import (FLUSH_WAIT_S, JOURNAL_FILE, Journal, MlflowWriter, RunRegistry, disk_full, finished_trials,
                      pending_entries)
from .logs import log, setup_logging
from .store import open_store
from .naming import ERROR_FILE, LAUNCH_FILE, POINT, REGISTRY_FILE, launch_args, point_key, point_of

HEAD_NODE_RESOURCE = "node:__internal_head__"
"""Every Ray head node holds 1 of it (ray._common.constants): the trial drivers ask for a sliver."""


def _tuner_parts(plan: Plan, tracking_uri: str, embedded: bool, finished: frozenset[str] = frozenset()):
    from ray import tune

    from .tracking import MlflowStudyLogger
    from .trial import trial_driver

    res = plan.resources
    configs = {k: c.model_dump() for k, c in plan.configs.items()}
    trainable = tune.with_parameters(trial_driver, configs=configs, resources=res.model_dump(),
                                     storage_path=str(plan.out_dir / "train"),
                                     artifacts_root=str(plan.out_dir / "trials"), in_trial=res.in_trial,
                                     finished=finished, embedded=embedded)
    if res.in_trial:  # the trial trains in its own process: it holds the worker's resources
        needs = {"CPU": res.cpus_per_worker, **({"GPU": res.gpus_per_worker} if res.gpus_per_worker else {})}
    else:
        # A trial driver only waits on its TorchTrainer: no CPU, and on the head node (where the study's driver
        # is), so that losing a worker node costs the Train workers on it, which Train restarts elsewhere.
        needs = {"CPU": 0, "memory": 1 << 20, HEAD_NODE_RESOURCE: 0.001}
    trainable = tune.with_resources(trainable, needs)
    logger = MlflowStudyLogger(tracking_uri, plan.study, plan.key, configs, plan.out_dir / "trials",
                               plan.out_dir / REGISTRY_FILE)
    return trainable, logger


def _param_space(points: list[dict[str, Any]]) -> dict[str, Any]:
    from ray import tune

    return {POINT: tune.grid_search(points)}


@dataclass
class Outcome:
    failed: int
    """Trials that failed (their reasons are in MLflow)."""
    tracking_uri: str
    interrupted: bool = False
    """Stopped by SIGTERM / Ctrl-C before every trial ended: `ablab resume` finishes it."""
    tracking_pending: int = 0
    """MLflow writes the store never took (it stayed down): kept in the journal for `ablab sync` / resume."""


def preflight(plan: Plan, address: Optional[str], tracking_uri: str, explicit_uri: bool = False,
              create: bool = True, check_cluster: bool = True) -> None:
    """Everything about where the study runs and logs that can be checked before Ray starts: the output
    folder (made unless ``create=False``), the tracking URI (and its server, if remote), the Ray address, or
    what this machine can hold when the cluster is the embedded one."""
    check_output_dir(plan.out_dir, create=create)
    field = "--tracking-uri" if explicit_uri else "tracking URI"
    check_tracking_uri(tracking_uri, field)
    probe_tracking_server(tracking_uri, field)
    if not check_cluster:
        return
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        check_ray_address(address, "--address" if address != os.environ.get("RAY_ADDRESS") else "RAY_ADDRESS")
    else:
        res = plan.resources
        check_embedded_resources(res.workers, res.cpus_per_worker, res.gpus_per_worker)


def run_study(launch: Launch, address: Optional[str] = None, tracking_uri: Optional[str] = None,
              out_root: Optional[str] = None, resume: bool = False, allow_large_grid: bool = False,
              retry_failed: bool = False, seeds: Optional[int] = None) -> Outcome:
    """Run (or resume) a launch. ``retry_failed`` (with resume): run the failed trials again, each from its last
    checkpoint when it has one, in the same MLflow run. ``tracking_uri`` on resume replaces launch.json's.
    ``seeds``: seeds 0..N-1 instead of the study's (plan_study)."""
    setup_logging()
    t0 = time.perf_counter()
    plan = plan_study(launch, out_root, allow_large_grid=allow_large_grid, seeds=seeds, resume=resume)
    tracking_uri = _launch(plan, address, tracking_uri, out_root, resume)
    forecast = RunEstimate(plan, skip=resume)  # its benchmark runs before Ray starts, on idle cores

    # Importing MLflow and opening the store (a new SQLite file: schema migrations) take ~2.5 s: done in a
    # thread while Ray starts.
    t_ray = time.perf_counter()
    with ThreadPoolExecutor(1) as pool:
        store = pool.submit(open_store, tracking_uri)
        where = start_ray(address)
        store.result()
    import ray

    max_conc = plan.concurrency(ray.cluster_resources())
    _announce(plan, where, time.perf_counter() - t_ray, max_conc, tracking_uri, out_root)
    forecast.announce(max_conc, f"ray {where}")

    tuner = _tuner(plan, tracking_uri, where == "local", max_conc, resume, retry_failed)
    t_fit = time.perf_counter()
    with _sigterm_as_interrupt():
        try:
            results = tuner.fit()
        except Exception:
            if disk_full(plan.out_dir):  # e.g. Tune's error files truncated by a full disk
                raise _full_disk(plan) from None
            raise
    t_fit = time.perf_counter() - t_fit
    failed, unfinished = summarize(plan, results, tracking_uri, time.perf_counter() - t0, t_fit)
    if any((r.metrics or {}).get("disk_full") for r in results):  # a trial failed on it (its driver's report)
        raise _full_disk(plan)
    if unfinished:
        log.info(f"interrupted: {unfinished} trial(s) stopped at their last checkpoint; "
                 f"`ablab resume {plan.study_path} {plan.args}` finishes the study")
    pending = len(pending_entries(plan.out_dir))
    if plan.study.claims:
        _check_claims(plan, tracking_uri, pending)
    if not unfinished:
        forecast.finish(None if pending else tracking_uri)
    pending = len(pending_entries(plan.out_dir))  # with the claims' and the estimate's writes, if the store failed
    if pending:
        log.warning(f"tracking: {pending} MLflow writes are not in {tracking_uri} yet (it did not answer); they are "
                    f"kept in {plan.out_dir / JOURNAL_FILE}, beside the trials' own files: "
                    f"`ablab sync {plan.study_path} {plan.args}` writes them once it answers")
    if where == "local":
        ray_temp.clean = not (failed or unfinished or pending)
        if not ray_temp.clean:
            log.info(f"ray: its logs are kept in {ray_temp.path / 'session_latest' / 'logs'}")
    return Outcome(failed, tracking_uri, interrupted=bool(unfinished), tracking_pending=pending)


def _announce(plan: Plan, where: str, t_ray: float, max_conc: int, tracking_uri: str, out_root: Optional[str]) -> None:
    """The study's first lines: what runs, on which cluster, where it logs and writes."""
    res = plan.resources
    log.info(f"study {plan.study.study} ({plan.study.paper} table {plan.study.table}), {plan.args}: "
             f"{len(plan.points)} trials x {len(plan.study.variant_configs()) or 1} inference variants")
    files = f", its files in {ray_temp.path}" if where == "local" else ""
    log.info(f"ray: {where} (ready in {t_ray:.1f}s{files}); {res.workers} worker(s) x {res.cpus_per_worker:g} CPU "
             f"per trial, {max_conc} at a time")
    log.info(f"mlflow: {tracking_uri}")
    log.info(f"outputs: {plan.out_dir}")
    if in_ray_job() and not (out_root or os.environ.get("ABLAB_OUTPUT_ROOT")):
        log.info(f"ray job: its working dir {Path.cwd()} is a temporary copy, so the outputs and the default MLflow "
                 f"store are in {plan.out_dir.parents[1]} (ABLAB_OUTPUT_ROOT or --out-root to change)")


def _full_disk(plan: Plan) -> OSError:
    """The one line a study stopped by a full disk ends with: the folder and what to do."""
    return OSError(errno.ENOSPC, f"{os.strerror(errno.ENOSPC)}: the study stopped, its trials' reasons are in MLflow; "
                                 f"free space, then `ablab resume {plan.study_path} {plan.args} --retry-failed`",
                   str(plan.out_dir))


def _check_claims(plan: Plan, tracking_uri: str, pending: int) -> None:
    """The claims' verdicts, logged and on the launch run; with MLflow writes ``pending``, read from the trials'
    own files and logged only (`ablab sync`, then `ablab table`, puts them in MLflow). A failure here costs the
    study nothing (`ablab table` computes them again from MLflow)."""
    from .labels import as_trained
    from .query import trial_files
    from .tracking import log_claims

    try:
        if pending:
            frame = claims_frame(as_trained(plan.launch), trial_files(plan.launch, plan.out_dir))
        else:
            frame = log_claims(plan.launch, tracking_uri, plan.out_dir / REGISTRY_FILE)
    except Exception as err:  # noqa: BLE001 - the study is done; only this summary is lost
        log.warning(f"claims: not checked ({type(err).__name__}: {str(err)[:200]}); `ablab table` checks them")
        return
    counts = frame.apply(verdict_text, axis=1).value_counts()
    source = " from the trials' own files (MLflow does not hold them all yet)" if pending else ""
    log.info(f"claims of the paper{source}: {', '.join(f'{n} {v}' for v, n in counts.items())} "
             f"(`ablab table {plan.study_path} {plan.args}` shows each)")


def sync_study(launch: Launch, tracking_uri: Optional[str] = None, out_root: Optional[str] = None) -> int:
    """Write the MLflow writes a launch could not make (its journal) to its store, without Ray; returns how many
    are still waiting (0: MLflow holds everything)."""
    setup_logging()
    # As a resume finds it: a Ray job's launch, synced from the checkout, is in ~/ablab-outputs
    plan = plan_study(launch, out_root, check_data=False, resume=True)
    entries = pending_entries(plan.out_dir)
    if not entries:
        log.info(f"nothing to sync: every MLflow write of {plan.out_dir} is in its store")
        return 0
    tracking_uri = _launch(plan, None, tracking_uri, out_root, resume=True, check_cluster=False)
    writer = MlflowWriter(tracking_uri, registry_path=plan.out_dir / REGISTRY_FILE)
    journal = Journal(plan.out_dir, writer.apply)
    left = journal.drain(FLUSH_WAIT_S)
    log.info(f"sync: {len(entries) - left} of {len(entries)} MLflow writes made to {tracking_uri}"
             + (f"; {left} still wait in {journal.path}" if left else ""))
    return left


def _launch(plan: Plan, address: Optional[str], tracking_uri: Optional[str], out_root: Optional[str],
            resume: bool, check_cluster: bool = True) -> str:
    """The launch's tracking URI (the given one, else launch.json's on resume, else the default), checked with
    everything else preflight checks, and written to launch.json."""
    launch_file = plan.out_dir / LAUNCH_FILE
    explicit = tracking_uri is not None
    if resume:
        if not launch_file.is_file():
            others = [f"`ablab resume {plan.study_path} {args}`" for args in other_launches(plan)]
            raise ConfigError(f"nothing to resume: no launch of {plan.args} ({launch_file} not found; run the study "
                              f"first)" + ("; the profile's launches there, each named by its --set: "
                                           + ", ".join(others) if others else ""))
        # launch.json holds the URI without credentials: they come back from the environment (or --tracking-uri).
        tracking_uri = adopt_credentials(tracking_uri or json.loads(launch_file.read_text())["tracking_uri"])
    else:
        tracking_uri = resolve_tracking_uri(plan.study.study, tracking_uri, out_root)
        if (plan.out_dir / "tune").exists():
            raise ConfigError(f"{plan.out_dir} already holds a run of this study: `ablab resume {plan.study_path}"
                              f" {plan.args}` finishes it (add --retry-failed to run its failed trials "
                              f"again); delete the folder to start over")
    try:
        preflight(plan, address, tracking_uri, explicit_uri=explicit, check_cluster=check_cluster)
    except ConfigError as err:
        if resume and not explicit and "tracking URI" in str(err):
            raise ConfigError(f"{err}; it comes from {launch_file}: --tracking-uri replaces it") from None
        raise
    kept = json.loads(launch_file.read_text()) if resume else {}  # e.g. the launch's estimate and wall
    launch = plan.launch
    launch_file.write_text(json.dumps({**kept, "study": plan.study_path, "profile": launch.profile, "set": launch.sets,
                                       "tracking_uri": tracking_uri, "seeds": launch.seeds,
                                       "trial_seeds": launch.trial_seeds}, indent=1))
    return tracking_uri


def other_launches(plan: Plan) -> list[str]:
    """``--profile P [--set ...]`` of every launch of the plan's profile in its study's folder but the plan's own
    (read from their launch.json: a launch without a ``set`` there has none)."""
    profile = plan.launch.profile
    folders = [plan.out_dir.with_name(profile), *plan.out_dir.parent.glob(f"{profile}+set-*")]
    out = []
    for f in sorted(folders):
        if f == plan.out_dir or not (f / LAUNCH_FILE).is_file():
            continue
        try:
            out.append(launch_args(profile, json.loads((f / LAUNCH_FILE).read_text()).get("set", {})))
        except (OSError, ValueError):  # a damaged launch.json: that folder is not offered
            continue
    return out


def _tuner(plan: Plan, tracking_uri: str, embedded: bool, max_concurrent: int, resume: bool, retry_failed: bool):
    from ray import tune

    finished = finished_trials(tracking_uri, plan.out_dir / REGISTRY_FILE) if resume else frozenset()
    trainable, logger = _tuner_parts(plan, tracking_uri, embedded=embedded, finished=finished)
    tune_dir = str(plan.out_dir / "tune")
    points = plan.points
    if retry_failed:  # asked to, a trial that stopped on a non-finite loss trains again too (trial.py)
        for error in (plan.out_dir / "trials").glob(f"*/{ERROR_FILE}"):
            error.unlink()
    if resume and tune.Tuner.can_restore(tune_dir):
        damage = _tune_state_damage(Path(tune_dir))
        if damage is None:
            # A retried trial finds its last checkpoint by its name (trial.py); one that failed before its first
            # starts over.
            return tune.Tuner.restore(tune_dir, trainable=trainable, resume_unfinished=True,
                                      resume_errored=retry_failed, restart_errored=False)
        points = _rebuild_points(plan, tracking_uri, damage, retry_failed)
    callbacks = [logger, tune.logger.CSVLoggerCallback(), tune.logger.JsonLoggerCallback()]
    res = plan.resources
    # Restarts from the last checkpoint: Tune's for a trial that trains in its own process, Train's (inside
    # the trial) for one on TorchTrainer workers.
    retries = res.max_failures if res.in_trial else 0
    run_config = tune.RunConfig(name="tune", storage_path=str(plan.out_dir), callbacks=callbacks,
                                failure_config=tune.FailureConfig(max_failures=retries), verbose=1)
    # reuse_actors: a trial driver process serves the next trial too, saving ~3 s of actor start per trial.
    return tune.Tuner(trainable, param_space=_param_space(points),
                      tune_config=tune.TuneConfig(max_concurrent_trials=max_concurrent, reuse_actors=True),
                      run_config=run_config)


def _tune_state_damage(tune_dir: Path) -> Optional[str]:
    """Why Ray Tune's saved state cannot be restored, or None. A state written on a full disk is cut short, and
    Tune restores its trials from it with empty configs."""
    states = sorted(tune_dir.glob("experiment_state-*.json"), key=lambda f: f.stat().st_mtime)
    for state in states[-1:] + [tune_dir / "tuner.pkl"]:
        if state.stat().st_size == 0:
            return f"{state.name} is empty"
    if states:
        try:
            json.loads(states[-1].read_text())
        except ValueError as err:
            return f"{states[-1].name} is cut short ({err})"
    return None


def _rebuild_points(plan: Plan, tracking_uri: str, damage: str, retry_failed: bool) -> list[dict[str, Any]]:
    """The study's training points whose MLflow run has not FINISHED, for a fresh Tune experiment that replaces
    a damaged one (kept beside it): each trial's driver finds its Train checkpoints by name, and its run in
    the run registry, so nothing done is lost or run twice."""
    tune_dir = plan.out_dir / "tune"
    advice = f"`ablab resume {plan.study_path} {plan.args} --retry-failed`"
    if not retry_failed:
        raise ConfigError(f"{tune_dir}: Ray Tune's saved state is damaged ({damage}; written on a full disk?): "
                          f"{advice} runs every trial that has not finished again, from its last checkpoint")

    finished = finished_trials(tracking_uri, plan.out_dir / REGISTRY_FILE)
    points = [p for p in plan.points if point_key(p) not in finished]
    if not points:
        raise ConfigError(f"nothing to resume: every trial of {plan.out_dir} has finished (its Ray Tune state is "
                          f"damaged: {damage}); `ablab table {plan.study_path} {plan.args}` shows them")
    aside = tune_dir.with_name(f"tune.damaged-{time.strftime('%Y%m%d-%H%M%S')}")
    tune_dir.rename(aside)
    log.warning(f"ray tune: its saved state is damaged ({damage}); it is kept in {aside}, and a new Tune run takes "
                f"the {len(points)} trial(s) that have not finished, each from its last checkpoint "
                f"({len(plan.points) - len(points)} finished, kept)")
    return points


@contextmanager
def _sigterm_as_interrupt():
    """SIGTERM (a preempted node, `kill`, a scheduler's stop) ends the study as Ctrl-C does: Tune's SIGINT
    handler stops the trials, which keep their last checkpoint, and saves the experiment state."""
    def on_term(signum, frame):
        log.info("SIGTERM: stopping the trials and saving the study's state")
        signal.raise_signal(signal.SIGINT)

    previous = signal.signal(signal.SIGTERM, on_term)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _tune_config(result) -> dict[str, Any]:
    """A Tune result's config; a trial restored without running again has none in memory, only on disk."""
    if result.config:
        return result.config
    return json.loads((Path(result.path) / "params.json").read_text())


def summarize(plan: Plan, results, tracking_uri: str, wall: float, trials_wall: float) -> tuple[int, int]:
    """Log one line per trial; returns (failed, unfinished) trial counts."""
    first = (plan.study.variant_configs() or [None])[0]
    layout = plan.study.table_layout
    shown = layout.metric(layout.columns[0]) if layout else "AP"
    metric = f"{first.name}/{shown}" if first else None
    lines, failed, unfinished = [], 0, 0
    for r in results:
        key = point_key(point_of(_tune_config(r)))
        m = r.metrics or {}
        if r.error is not None or m.get("failed"):
            failed += 1
            status = "FAILED"
        else:
            status = "done" if m.get("done") else "incomplete"
            unfinished += status == "incomplete"
        ap = m.get(metric) if metric else next((v for k, v in m.items() if k.endswith(f"/{shown}")), None)
        lines.append(f"  {key:<40} {status:<10} {metric or shown}={ap:.3f}" if isinstance(ap, float)
                     else f"  {key:<40} {status}")
    stopped = f", {unfinished} interrupted" if unfinished else ""
    log.info(f"finished in {wall:.0f}s (trials {trials_wall:.1f}s): {len(lines) - failed - unfinished} ok, "
             f"{failed} failed{stopped}")
    for line in lines:
        log.info(line)
    launch = plan.launch
    overrides = f", overrides={launch.overrides!r}" if launch.sets else ""
    log.info(f"results: ablab results {plan.study_path} {plan.args}   |   python -c \"import ablab; "
             f"print(ablab.results('{plan.study.study}', profile='{launch.profile}'{overrides}))\"")
    log.info(f"mlflow: {tracking_uri}")
    for line in browse_lines(tracking_uri, RunRegistry(plan.out_dir / REGISTRY_FILE).data.get("experiment")):
        log.info(line)
    return failed, unfinished
