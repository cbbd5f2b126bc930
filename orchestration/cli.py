"""``recsys``: the project's commands (what the Makefile calls).

- ``recsys demo``: embedded Redis, the whole pipeline headless, the service,
  recommendations for three users, metrics; then stops what it started.
- ``recsys serve [--port N]``: the BentoML service in the foreground.
- ``recsys redis start|stop``, ``recsys stop``: the local services under ``$RECSYS_HOME``.
"""

import argparse
import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from infra import redis_server
from infra.processes import free_port
from infra.settings import Settings

SERVICE = "serving.service:Recommender"


def start_service(settings: Settings, port: int, log_path: Path | None = None,
                  env: dict[str, str] | None = None) -> subprocess.Popen:
    """``bentoml serve`` in its own process group (its workers die with it);
    ``env``: extra environment (e.g. ``RECSYS_API_KEY``)."""
    pid_file = settings.pid_file("serve")
    pid_file.parent.mkdir(parents=True, exist_ok=True)
    out = open(log_path, "ab") if log_path else None  # noqa: SIM115 (owned by the child)
    process = subprocess.Popen(
        [sys.executable, "-m", "bentoml", "serve", SERVICE, "--port", str(port),
         "--host", "127.0.0.1"],
        env={**os.environ, "RECSYS_HOME": str(settings.home), **(env or {})},
        stdout=out, stderr=subprocess.STDOUT if out else None, start_new_session=True,
    )
    pid_file.write_text(str(process.pid))
    return process


def wait_ready(port: int, process: subprocess.Popen, timeout: float = 180.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the service exited with code {process.returncode}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200:
                return
        time.sleep(0.5)
    raise TimeoutError(f"the service was not ready on port {port} after {timeout}s")


def stop_service(settings: Settings) -> bool:
    pid_file = settings.pid_file("serve")
    if not pid_file.exists():
        return False
    pid = int(pid_file.read_text())
    pid_file.unlink()
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        return False
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        try:
            os.killpg(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.2)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)
    return True


# The blocking promotion check's step: when only it fails, the run did its job.
PROMOTION_STEP = "behaviour_encoder_version_challenger_beats_champion"


def run_pipeline(settings: Settings):
    """The whole asset graph, headless, recorded in the Dagster instance under home."""
    os.environ["DAGSTER_HOME"] = str(settings.dagster_home)
    from orchestration.definitions import defs
    from orchestration.lineage import instance_for

    instance = instance_for(settings)
    result = defs.resolve_job_def("recsys_pipeline").execute_in_process(
        instance=instance, raise_on_error=False,
        run_config={"loggers": {"console": {"config": {"log_level": "INFO"}}}})
    steps = instance.get_run_step_stats(result.run_id)
    return result, [(s.step_key, (s.end_time or 0) - (s.start_time or 0)) for s in steps]


def demo(settings: Settings) -> None:
    timings: list[tuple[str, float]] = []

    @contextlib.contextmanager
    def stage(name: str):
        started = time.perf_counter()
        print(f"\n== {name}", flush=True)
        yield
        timings.append((name, time.perf_counter() - started))

    started_redis = redis_server.running(settings) is None and not settings.redis_url
    process = None
    try:
        with stage("embedded Redis"):
            server = redis_server.ensure(settings)
            print(f"Redis at {server.url}")
        with stage("pipeline (dagster, all assets)"):
            result, steps = run_pipeline(settings)
            failed = {e.step_key for e in result.get_step_failure_events()}
            if failed - {PROMOTION_STEP}:
                raise SystemExit(f"the pipeline failed at {sorted(failed)}; see the Dagster "
                                 "UI (make ui)")
            for key, seconds in steps:
                print(f"  {key:<32} {seconds:7.1f} s")
            if failed:  # a challenger that lost: the gate worked, the champion stays
                print("  the new challenger did not beat the champion, which stays "
                      "(promotion check in the Dagster UI)")
        with stage("service (bentoml serve)"):
            port = free_port()
            process = start_service(settings, port, settings.log_file("serve"))
            wait_ready(port, process)
            print(f"serving on http://127.0.0.1:{port}")
        with stage("recommendations"):
            show_recommendations(settings, port)
        show_metrics(settings)
    finally:
        if process is not None:
            stop_service(settings)
        if started_redis:
            redis_server.stop(settings)
    print("\n== time per stage")
    for name, seconds in timings:
        print(f"  {name:<34} {seconds:7.1f} s")
    print(f"""
== next
  make ui          # Dagster UI (assets, checks, runs): http://127.0.0.1:3001
  make mlflow-ui   # MLflow UI (runs, metrics, registry): http://127.0.0.1:5000
  make serve       # the service on PORT (default 3000), then e.g.
  curl -s -XPOST localhost:3000/recommend -H 'content-type: application/json' \\
       -d '{{"user_id": "u00001", "k": 5}}'
  Data Docs: {settings.data_docs_dir / 'index.html'}
  Reports (drift, skew, champion curves, Data Docs): {settings.reports_dir / 'index.html'}
  state: {settings.home}""")


def show_recommendations(settings: Settings, port: int) -> None:
    from orchestration.offline import read_validated_events

    events = read_validated_events(settings, columns=["user_id"])
    users = events["user_id"].value_counts().index[[0, len(events["user_id"].unique()) // 2, -1]]
    for user in users:
        answer = httpx.post(f"http://127.0.0.1:{port}/recommend",
                            json={"user_id": user, "k": 5}, timeout=30).json()
        print(f"user {user} (model v{answer['model_version']}, degraded={answer['degraded']}):")
        for item in answer["items"]:
            print(f"   {item['score']:8.3f}  {item['item_id']:<8} {item['title']}")


def show_metrics(settings: Settings) -> None:
    from training import registry

    uri = settings.tracking_uri()
    version = registry.alias_version(uri, registry.CHAMPION)
    run = registry.client(uri).get_run(
        registry.client(uri).get_model_version(registry.MODEL_NAME, version).run_id)
    m = run.data.metrics
    print(f"\n== champion behaviour_encoder v{version} (test split, protocol of DESIGN.md)")
    print(f"  {'':<12} {'NDCG@10':>8} {'HR@10':>8} {'MRR':>8} {'cov@10':>8}")
    print(f"  {'encoder':<12} {m['ndcg_at_10']:8.4f} {m['hr_at_10']:8.4f} {m['mrr']:8.4f} "
          f"{m['coverage_at_10']:8.4f}")
    print(f"  {'popularity':<12} {m['baseline_pop_ndcg_at_10']:8.4f} "
          f"{m['baseline_pop_hr_at_10']:8.4f} {m['baseline_pop_mrr']:8.4f} "
          f"{m['baseline_pop_coverage_at_10']:8.4f}")
    if "baseline_ease_ndcg_at_10" in m:
        print(f"  {'EASE':<12} {m['baseline_ease_ndcg_at_10']:8.4f} "
              f"{m['baseline_ease_hr_at_10']:8.4f} {m['baseline_ease_mrr']:8.4f} "
              f"{m['baseline_ease_coverage_at_10']:8.4f}")
    print(f"  trained in {m['train_seconds']:.0f} s, best epoch {m['best_epoch']:.0f}")


def serve(settings: Settings, port: int) -> int:
    redis_server.ensure(settings)
    process = start_service(settings, port)
    try:
        return process.wait()
    except KeyboardInterrupt:
        stop_service(settings)
        return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="recsys", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("demo", help="run everything on the built-in data and show the result")
    serve_parser = sub.add_parser("serve", help="run the service in the foreground")
    serve_parser.add_argument("--port", type=int, default=int(os.environ.get("PORT", 3000)))
    redis_parser = sub.add_parser("redis", help="the embedded Redis")
    redis_parser.add_argument("action", choices=["start", "stop", "status"])
    sub.add_parser("stop", help="stop the service and the embedded Redis")
    promote_parser = sub.add_parser(
        "promote", help="point the champion alias at a registered behaviour_encoder version")
    promote_parser.add_argument("version")
    sub.add_parser("rollback", help="move the champion alias back to the previous champion")
    lineage_parser = sub.add_parser(
        "lineage", help="a model version's chain: MLflow run, Dagster run, raw files")
    lineage_parser.add_argument("version", nargs="?", help="default: the champion")
    lineage_parser.add_argument("--json", action="store_true", help="print JSON")
    args = parser.parse_args(argv)
    settings = Settings.from_env()
    if args.command == "demo":
        demo(settings)
    elif args.command == "serve":
        return serve(settings, args.port)
    elif args.command == "redis":
        if args.action == "start":
            print(redis_server.ensure(settings).url)
        elif args.action == "stop":
            print("stopped" if redis_server.stop(settings) else "not running")
        else:
            server = redis_server.running(settings)
            print(server.url if server else "not running")
    elif args.command == "stop":
        print("service:", "stopped" if stop_service(settings) else "not running")
        print("redis:", "stopped" if redis_server.stop(settings) else "not running")
    elif args.command == "lineage":
        return print_lineage(settings, args.version, args.json)
    elif args.command in ("promote", "rollback"):
        return move_champion(settings, args.command, getattr(args, "version", None))
    return 0


def move_champion(settings: Settings, action: str, version: str | None) -> int:
    """Manual promotion and rollback (the service picks the alias up when it reloads)."""
    from mlflow.exceptions import MlflowException

    from training import registry

    uri = settings.tracking_uri()
    before = registry.alias_version(uri, registry.CHAMPION)
    try:
        if action == "promote":
            registry.set_champion(uri, version)
        else:
            registry.rollback_champion(uri)
    except (MlflowException, ValueError) as error:
        print(f"recsys {action}: {error}", file=sys.stderr)
        return 1
    print(f"champion: v{before} -> v{registry.alias_version(uri, registry.CHAMPION)}")
    return 0



def print_lineage(settings: Settings, version: str | None, as_json: bool) -> int:
    import json

    from mlflow.exceptions import MlflowException

    from orchestration.lineage import format_lineage, lineage
    from training import registry

    version = version or registry.alias_version(settings.tracking_uri(), registry.CHAMPION)
    if version is None:
        print("recsys lineage: no version given and no champion yet", file=sys.stderr)
        return 1
    try:
        chain = lineage(settings, version)
    except MlflowException as error:
        print(f"recsys lineage: {error}", file=sys.stderr)
        return 1
    print(json.dumps(chain, indent=1, default=str) if as_json else format_lineage(chain))
    return 0


if __name__ == "__main__":
    sys.exit(main())
