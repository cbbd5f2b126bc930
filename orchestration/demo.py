"""``recsys demo`` (``make demo``): the embedded Redis, the pipeline headless on the
built-in data, the service, recommendations for three users and the champion's
metrics; then it stops what it started.

The demo shows the platform rather than waiting on it: training gets a shorter
budget (``DEMO_TRAIN_SECONDS``) and the cold-start evaluation, which trains a
second model, is left out (``make bench SECTIONS=models`` and the scheduled
pipeline run it). What the libraries print goes to ``$RECSYS_HOME/demo.log``;
the terminal gets a short, aligned summary.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Iterator

import httpx

from infra import redis_server
from infra.processes import free_port
from infra.settings import Settings
from orchestration.cli import start_service, stop_service, wait_ready

# The blocking promotion check's step: when only it fails, the run did its job.
PROMOTION_STEP = "behaviour_encoder_version_challenger_beats_champion"
DEMO_TRAIN_SECONDS = 100.0
DEMO_SKIPS = frozenset({"cold_start_evaluation"})


def run_pipeline(settings: Settings, quick: bool = False):
    """The whole asset graph, headless, recorded in the Dagster instance under home;
    ``quick``: the demo's training budget, without ``DEMO_SKIPS``."""
    os.environ["DAGSTER_HOME"] = str(settings.dagster_home)
    from orchestration.definitions import ASSETS, defs
    from orchestration.lineage import instance_for

    instance = instance_for(settings)
    run_config: dict = {"loggers": {"console": {"config": {"log_level": "INFO"}}}}
    selection = None
    if quick:
        run_config["ops"] = {"behaviour_encoder_version": {"config": {
            "max_train_seconds": DEMO_TRAIN_SECONDS}}}
        selection = [key for asset in ASSETS for key in asset.keys
                     if key.to_user_string() not in DEMO_SKIPS]
    result = defs.resolve_job_def("recsys_pipeline").execute_in_process(
        instance=instance, raise_on_error=False, run_config=run_config,
        asset_selection=selection)
    steps = instance.get_run_step_stats(result.run_id)
    return result, [(s.step_key, (s.end_time or 0) - (s.start_time or 0)) for s in steps]


@contextlib.contextmanager
def quiet_output(log_path) -> Iterator[object]:
    """Everything written to file descriptors 1 and 2 (library logs, warnings,
    progress bars, child processes) goes to ``log_path``; yields a stream to the
    terminal for the summary."""
    sys.stdout.flush()
    sys.stderr.flush()
    terminal = os.fdopen(os.dup(1), "w", buffering=1)
    saved = os.dup(1), os.dup(2)
    with open(log_path, "ab") as log:
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
        try:
            yield terminal
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)
            terminal.close()


def _table(rows: list[tuple[str, str]], indent: str = "  ") -> str:
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"{indent}{name:<{width}}  {value:>9}" for name, value in rows)


def demo(settings: Settings) -> None:
    log_path = settings.log_file("demo")
    settings.home.mkdir(parents=True, exist_ok=True)
    timings: list[tuple[str, float]] = []
    started_redis = redis_server.running(settings) is None and not settings.redis_url
    process = None
    with quiet_output(log_path) as out:
        def say(text: str = "") -> None:
            print(text, file=out, flush=True)

        @contextlib.contextmanager
        def stage(name: str):
            started = time.perf_counter()
            say(f"\n== {name}")
            yield
            timings.append((name, time.perf_counter() - started))

        say(f"recsys demo: state in {settings.home}, library output in {log_path}")
        try:
            with stage("embedded Redis"):
                say(f"  Redis at {redis_server.ensure(settings).url}")
            with stage("pipeline (Dagster, every asset but "
                       f"{', '.join(sorted(DEMO_SKIPS))})"):
                result, steps = run_pipeline(settings, quick=True)
                failed = {e.step_key for e in result.get_step_failure_events()}
                if failed - {PROMOTION_STEP}:
                    raise SystemExit(f"the pipeline failed at {sorted(failed)}; the log is "
                                     f"{log_path}, the run is in the Dagster UI (make ui)")
                say(_table([(key, f"{seconds:.1f} s") for key, seconds in steps]))
                if failed:  # a challenger that lost: the gate worked, the champion stays
                    say("  the new challenger did not beat the champion, which stays "
                        "(promotion check in the Dagster UI)")
            with stage("service (bentoml serve)"):
                port = free_port()
                process = start_service(settings, port, settings.log_file("serve"))
                wait_ready(port, process)
                say(f"  serving on http://127.0.0.1:{port} (web page: /, API page: /docs)")
            with stage("recommendations"):
                say(recommendations(settings, port))
            say(metrics(settings))
            say("\n  user ids are stored " + (
                "as keyed pseudonyms (RECSYS_PSEUDONYMISE=true; docs/privacy.md)"
                if settings.pseudonymise else "as given; RECSYS_PSEUDONYMISE=true make demo "
                "stores keyed pseudonyms instead (docs/privacy.md)"))
        finally:
            if process is not None:
                stop_service(settings)
            if started_redis:
                redis_server.stop(settings)
        say("\n== time per stage")
        say(_table([(name, f"{seconds:.1f} s") for name, seconds in timings]))
        say(f"""
== next
  make ui          # Dagster UI (assets, checks, runs): http://127.0.0.1:3001
  make mlflow-ui   # MLflow UI (runs, metrics, registry): http://127.0.0.1:5000
  make serve       # the service on PORT (default 3000), then open its web page:
                   #   http://127.0.0.1:3000/  (pick a user, click, watch the list change)
                   #   its API page: http://127.0.0.1:3000/docs
  make stop        # stops whatever the project started
  Data Docs: {settings.data_docs_dir / 'index.html'}
  Reports (drift, skew, champion curves, Data Docs): {settings.reports_dir / 'index.html'}""")


def recommendations(settings: Settings, port: int) -> str:
    """Top 5 for the most active, the median and the least active user (ids as the
    source gives them: with pseudonymisation on, the stored ones are pseudonyms)."""
    from orchestration.offline import read_validated_events
    from orchestration.resources import RecsysState

    if settings.pseudonymise:
        users = RecsysState.of(settings).open_source().events()["user_id"].astype(str)
    else:
        users = read_validated_events(settings, columns=["user_id"])["user_id"]
    counts = users.value_counts()
    lines = []
    for label, user in zip(("most active", "median", "least active"),
                           counts.index[[0, len(counts) // 2, -1]], strict=True):
        answer = httpx.post(f"http://127.0.0.1:{port}/recommend",
                            json={"user_id": user, "k": 5}, timeout=30).json()
        lines.append(f"  {label} user {user} ({counts[user]} events; model "
                     f"v{answer['model_version']}, degraded={answer['degraded']}):")
        lines += [f"    {item['score']:7.3f}  {item['item_id']:<8} {item['title']}"
                  for item in answer["items"]]
    return "\n".join(lines)


def metrics(settings: Settings) -> str:
    """The champion's test metrics beside the baselines of the same split and run."""
    from training import registry

    uri = settings.tracking_uri()
    version = registry.alias_version(uri, registry.CHAMPION)
    m = registry.version_run(uri, version).data.metrics
    rows = [("encoder", ""), ("popularity", "baseline_pop_")]
    if "baseline_ease_ndcg_at_10" in m:
        rows.append(("EASE", "baseline_ease_"))
    names = ("ndcg_at_10", "hr_at_10", "mrr", "coverage_at_10")
    lines = [f"\n== champion behaviour_encoder v{version} (test split, protocol of DESIGN.md)",
             f"  {'':<12} {'NDCG@10':>8} {'HR@10':>8} {'MRR':>8} {'cov@10':>8}"]
    lines += [f"  {label:<12} " + " ".join(f"{m[prefix + n]:8.4f}" for n in names)
              for label, prefix in rows]
    lines.append(f"  trained in {m['train_seconds']:.0f} s, best epoch {m['best_epoch']:.0f}")
    return "\n".join(lines)
