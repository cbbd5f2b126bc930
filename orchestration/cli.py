"""``recsys``: the project's commands (what the Makefile calls).

- ``recsys demo``: embedded Redis, the whole pipeline headless, the service,
  recommendations for three users, metrics; then stops what it started.
- ``recsys serve [--port N]``, ``recsys ui``, ``recsys mlflow-ui``: the service,
  the Dagster UI and the MLflow UI in the foreground (their pids recorded).
- ``recsys mlflow-server``: an MLflow tracking server (store and artifacts under
  ``$RECSYS_HOME/mlflow-server``) for ``MLFLOW_TRACKING_URI=http://...``.
- ``recsys consume [--once]``: drain the event stream into the offline event log.
- ``recsys redis start|stop``, ``recsys stop``: the local services under
  ``$RECSYS_HOME``; ``stop`` stops everything the project started.
"""

import argparse
import contextlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx

from infra import redis_server
from infra.processes import start_process, stop_process
from infra.settings import Settings

SERVICE = "serving.service:Recommender"


def service_env(settings: Settings, name: str,
                env: dict[str, str] | None = None) -> dict[str, str]:
    """A service process's own BENTOML_HOME, beside its pid file: BentoML keeps its
    workers' metric counters (``/metrics``) in a directory there and empties that
    directory whenever a server starts, so two services sharing one would erase each
    other's counts. Serving from source reads nothing else there; ``env`` may name
    another (a built bento's store)."""
    return {"BENTOML_HOME": str(settings.run_dir / f"{name}.bentoml"), **(env or {})}


def service_argv(port: int) -> list[str]:
    """The service's command line, on loopback at ``port``."""
    return [sys.executable, "-m", "bentoml", "serve", SERVICE, "--port", str(port),
            "--host", "127.0.0.1"]


def start_service(settings: Settings, port: int, log_path: Path | None = None,
                  env: dict[str, str] | None = None, name: str = "serve") -> subprocess.Popen:
    """``bentoml serve`` in its own process group (its workers die with it);
    ``env``: extra environment (e.g. ``RECSYS_API_KEY``); ``name``: its pid file's."""
    return start_process(settings, name, service_argv(port), log_path,
                         service_env(settings, name, env))


def wait_ready(port: int, process: subprocess.Popen, timeout: float = 180.0) -> None:
    wait_http(f"http://127.0.0.1:{port}/readyz", process, timeout)


def stop_service(settings: Settings, name: str = "serve") -> bool:
    return stop_process(settings, name)


# Processes ``recsys stop`` stops besides the embedded Redis, by pid-file name, with
# how long each may take to exit after SIGTERM before it is killed.
STOPPABLE = {"serve": 15.0, "ui": 5.0, "mlflow-ui": 5.0, "mlflow-server": 10.0,
             "consume": 10.0}


def foreground(settings: Settings, name: str, argv: list[str],
               env: dict[str, str] | None = None) -> int:
    """Run ``argv`` until it exits or Ctrl-C; its pid is recorded for ``recsys stop``."""
    process = start_process(settings, name, argv, env=env)
    try:
        return process.wait()
    except KeyboardInterrupt:
        stop_process(settings, name, STOPPABLE[name])
        return 0
    finally:
        settings.pid_file(name).unlink(missing_ok=True)


def serve(settings: Settings, port: int) -> int:
    redis_server.ensure(settings)
    return foreground(settings, "serve", service_argv(port), service_env(settings, "serve"))


def ui(settings: Settings, port: int) -> int:
    # This home's Dagster instance, whatever DAGSTER_HOME the caller had.
    settings.dagster_home.mkdir(parents=True, exist_ok=True)
    return foreground(settings, "ui", [
        sys.executable, "-m", "dagster", "dev", "-m", "orchestration.definitions",
        "-p", str(port)], env={"DAGSTER_HOME": str(settings.dagster_home)})


def mlflow_ui(settings: Settings, port: int) -> int:
    if not settings.mlflow_tracking_uri:  # the local store's directory, before any run
        settings.mlflow_dir.mkdir(parents=True, exist_ok=True)
    return foreground(settings, "mlflow-ui", [
        sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", settings.tracking_uri(),
        "--port", str(port)])


def mlflow_server_argv(settings: Settings, port: int, host: str = "127.0.0.1") -> list[str]:
    """``mlflow server`` with its backend store and served artifacts under
    ``$RECSYS_HOME/mlflow-server``: clients on any host reach both over HTTP."""
    directory = settings.mlflow_server_dir
    directory.mkdir(parents=True, exist_ok=True)
    return [sys.executable, "-m", "mlflow", "server",
            "--backend-store-uri", f"sqlite:///{directory / 'mlflow.db'}",
            "--artifacts-destination", str(directory / "artifacts"),
            "--host", host, "--port", str(port)]


def wait_http(url: str, process: subprocess.Popen, timeout: float = 120.0) -> None:
    """Until ``url`` answers 200 (or ``process`` exits, or ``timeout``)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{process.args[:4]} exited with code {process.returncode}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=2).status_code == 200:
                return
        time.sleep(0.5)
    raise TimeoutError(f"{url} did not answer within {timeout}s")


def start_mlflow_server(settings: Settings, port: int) -> str:
    """``recsys mlflow-server`` in the background; its tracking URI once it answers."""
    process = start_process(settings, "mlflow-server", mlflow_server_argv(settings, port),
                            settings.log_file("mlflow-server"))
    uri = f"http://127.0.0.1:{port}"
    wait_http(f"{uri}/health", process)
    return uri


def stop_all(settings: Settings) -> list[str]:
    """Stop every process the project started under this home; what was stopped."""
    stopped = [name for name, grace in STOPPABLE.items()
               if stop_process(settings, name, grace)]
    if redis_server.stop(settings):
        stopped.append("redis")
    return stopped


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="recsys", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("demo", help="run everything on the built-in data and show the result")
    serve_parser = sub.add_parser("serve", help="run the service in the foreground")
    serve_parser.add_argument("--port", type=int, default=int(os.environ.get("PORT", 3000)))
    redis_parser = sub.add_parser("redis", help="the embedded Redis")
    redis_parser.add_argument("action", choices=["start", "stop", "status"])
    for name, default in (("ui", 3001), ("mlflow-ui", 5000)):
        sub.add_parser(name, help=f"the {'Dagster' if name == 'ui' else 'MLflow'} UI in the "
                       "foreground").add_argument("--port", type=int, default=default)
    server_parser = sub.add_parser(
        "mlflow-server", help="an MLflow tracking server under $RECSYS_HOME/mlflow-server")
    server_parser.add_argument("--port", type=int, default=5000)
    server_parser.add_argument("--host", default="127.0.0.1",
                               help="0.0.0.0 to take clients from other hosts")
    consume_parser = sub.add_parser(
        "consume", help="drain the event stream into the offline event log")
    consume_parser.add_argument("--once", action="store_true",
                                help="drain what is there now, then exit")
    consume_parser.add_argument("--name", help="consumer name (default: this host's)")
    forget_parser = sub.add_parser(
        "forget", help="forget users everywhere: Redis, every copy under $RECSYS_HOME, "
        "and from the next ingest on (docs/privacy.md)")
    forget_parser.add_argument("user_ids", nargs="*", metavar="USER_ID",
                               help="the ids as the source and callers give them")
    forget_parser.add_argument("--reason", default="deletion request")
    forget_parser.add_argument("--pending", action="store_true",
                               help="also apply the requests the service took (POST /forget)")
    sub.add_parser("stop", help="stop everything the project started (service, UIs, Redis)")
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
        from orchestration.demo import demo

        demo(settings)
    elif args.command == "serve":
        return serve(settings, args.port)
    elif args.command == "ui":
        return ui(settings, args.port)
    elif args.command == "mlflow-ui":
        return mlflow_ui(settings, args.port)
    elif args.command == "mlflow-server":
        print(f"MLflow tracking server: export MLFLOW_TRACKING_URI=http://{args.host}:"
              f"{args.port}", flush=True)
        return foreground(settings, "mlflow-server",
                          mlflow_server_argv(settings, args.port, args.host))
    elif args.command == "consume":
        from orchestration.consume import consume

        if args.once:
            return consume(settings, args.name, once=True)
        return foreground(settings, "consume", [sys.executable, "-m", "orchestration.consume",
                                                *([args.name] if args.name else [])])
    elif args.command == "redis":
        if args.action == "start":
            print(redis_server.ensure(settings).url)
        elif args.action == "stop":
            print("stopped" if redis_server.stop(settings) else "not running")
        else:
            server = redis_server.running(settings)
            print(server.url if server else "not running")
    elif args.command == "forget":
        return forget_users(settings, args.user_ids, args.reason, args.pending)
    elif args.command == "stop":
        stopped = stop_all(settings)
        print("stopped: " + ", ".join(stopped) if stopped else "nothing was running")
    elif args.command == "lineage":
        return print_lineage(settings, args.version, args.json)
    elif args.command in ("promote", "rollback"):
        return move_champion(settings, args.command, getattr(args, "version", None))
    return 0


def forget_users(settings: Settings, user_ids: list[str], reason: str, pending: bool) -> int:
    """One JSON line per user: its tombstone key (never the id), whether anything
    was held, and what was removed where."""
    from orchestration.privacy import apply_pending, forget

    if not user_ids and not pending:
        print("recsys forget: give USER_ID... or --pending", file=sys.stderr)
        return 2
    for result in forget(settings, user_ids, reason):
        print(json.dumps({"tombstone": result.key, "forgotten": result.known,
                          "removed": result.removed,
                          **({} if result.known else {"note": "nothing was held for this "
                                                              "user: nothing done"})}))
    if pending:
        print(json.dumps({"pending_applied": apply_pending(settings).counts}))
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
    after = registry.alias_version(uri, registry.CHAMPION)
    print(f"champion: v{before} -> v{after}" if before else f"champion: v{after}")
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
