"""One typed settings object, read from the environment once per call site.

Every other package takes a ``Settings`` instead of reading ``os.environ``.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

DEFAULT_HOME = ".recsys"
ENGINES = ("embedded", "ray")  # RECSYS_ENGINE (infra.engine)


def _flag(env, name: str) -> bool:
    value = (env.get(name) or "").strip().lower()
    if value not in ("", "0", "1", "false", "true", "no", "yes"):
        raise ValueError(f"{name} must be true or false, got {value!r}")
    return value in ("1", "true", "yes")


@dataclass(frozen=True)
class Settings:
    """Where state lives and which external services to use.

    ``redis_url`` / ``mlflow_tracking_uri`` are ``None`` when the project should
    run its own (embedded Redis, local MLflow store under ``home``).
    """

    home: Path
    source: Path | None = None
    redis_url: str | None = field(default=None, repr=False)  # may hold a password
    # The Redis holding the event stream; None: the online store's Redis.
    events_url: str | None = field(default=None, repr=False)
    mlflow_tracking_uri: str | None = field(default=None, repr=False)
    recent_items: int = 50
    feast_project: str = "recsys"
    serving_threads: int = 1
    future_tolerance_s: float = 86400.0
    redis_cluster: bool = False  # REDIS_URL is a node of a Redis Cluster
    feast_offline_store: str | None = None  # JSON: Feast offline_store config (default file)
    api_key: str | None = field(default=None, repr=False)  # required by the service when set
    max_body_bytes: int = 1 << 20  # the service's request body limit
    model_poll_s: int = 30  # how often the service checks the champion alias
    quantize: bool = False  # the service runs the encoder int8-quantised
    serving_workers: int = 2  # service worker processes (each loads the model)
    access_log: bool = False  # the service logs one line per request (CPU on each)
    tracing: bool = False  # OpenTelemetry spans in the service (off: no SDK work per request)
    # The service's Redis calls: socket and connect timeout, no client retries (a
    # request's deadline leaves no room for them). Low on loopback; raise it for a
    # remote Redis.
    redis_timeout_ms: int = 20
    # A request not answered by the model within this budget answers from popularity,
    # flagged, instead of queueing behind slower ones.
    deadline_ms: int = 50
    # From this catalogue size on the service retrieves candidates from an ANN index
    # and re-ranks them exactly, instead of scoring every item (docs/benchmarks.md,
    # Retrieval, shows where the two paths cross).
    ann_min_items: int = 10_000
    # Query embeddings each service worker keeps (LRU): 1.5 KB each.
    query_cache: int = 10_000
    # Up to this catalogue size each service worker holds every item's text
    # embedding (the no-history content blend and the query path); beyond it a
    # million items would be 1.5 GB a worker and a scan of them per request, so
    # those answers fall back to popularity.
    content_max_items: int = 200_000
    # Validation and test (the evaluation protocol of DESIGN.md) on at most this
    # many users, drawn once with a fixed seed, so that the same users judge every
    # model: each rank is over the whole catalogue, which at a million items costs
    # milliseconds a user. 20,000 users put NDCG@10's standard error near 0.002.
    evaluation_users: int = 20_000
    # Where the offline work's blocks run (infra.engine): in the asset's process, or
    # as Ray tasks on the cluster at ``ray_address`` (unset: a local Ray that the
    # project starts and stops, with ``ray_cpus`` CPUs and ``ray_memory_mb`` MB).
    engine: str = "embedded"
    ray_address: str | None = None
    ray_cpus: int = 2
    ray_memory_mb: int = 4096
    # User ids become keyed hashes before anything is stored (feature_repo.privacy).
    pseudonymise: bool = False
    # The key itself is never serialised (``to_json`` leaves it out): it comes from
    # the environment or from the key file.
    pseudonym_key: str | None = field(default=None, repr=False)
    pseudonym_key_file: Path | None = None  # None: privacy/pseudonym.key under home

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> Settings:
        env = os.environ if environ is None else environ
        home = Path(env.get("RECSYS_HOME") or DEFAULT_HOME).expanduser().resolve()
        source = env.get("RECSYS_SOURCE") or None
        def given(variable: str, field_name: str) -> str:
            """The variable's value, or the field's default (defined once, above)."""
            return env.get(variable) or str(cls.__dataclass_fields__[field_name].default)

        recent = given("RECSYS_RECENT_ITEMS", "recent_items")
        threads = given("RECSYS_SERVING_THREADS", "serving_threads")
        tolerance = env.get("RECSYS_FUTURE_TOLERANCE_S") or str(int(
            cls.__dataclass_fields__["future_tolerance_s"].default))
        if not tolerance.isdigit():
            raise ValueError(f"RECSYS_FUTURE_TOLERANCE_S must be whole seconds >= 0, "
                             f"got {tolerance!r}")
        body = given("RECSYS_MAX_BODY_BYTES", "max_body_bytes")
        poll = given("RECSYS_MODEL_POLL_S", "model_poll_s")
        workers = given("RECSYS_SERVING_WORKERS", "serving_workers")
        redis_timeout = given("RECSYS_REDIS_TIMEOUT_MS", "redis_timeout_ms")
        deadline = given("RECSYS_DEADLINE_MS", "deadline_ms")
        ann_min_items = given("RECSYS_ANN_MIN_ITEMS", "ann_min_items")
        evaluation_users = given("RECSYS_EVALUATION_USERS", "evaluation_users")
        query_cache = given("RECSYS_QUERY_CACHE", "query_cache")
        content_max_items = given("RECSYS_CONTENT_MAX_ITEMS", "content_max_items")
        engine = given("RECSYS_ENGINE", "engine").strip().lower()
        if engine not in ENGINES:
            raise ValueError(f"RECSYS_ENGINE must be one of {', '.join(ENGINES)}, got {engine!r}")
        ray_cpus = given("RECSYS_RAY_CPUS", "ray_cpus")
        ray_memory = given("RECSYS_RAY_MEMORY_MB", "ray_memory_mb")
        for name, value in (("RECSYS_RECENT_ITEMS", recent), ("RECSYS_SERVING_THREADS", threads),
                            ("RECSYS_MAX_BODY_BYTES", body), ("RECSYS_MODEL_POLL_S", poll),
                            ("RECSYS_SERVING_WORKERS", workers),
                            ("RECSYS_REDIS_TIMEOUT_MS", redis_timeout),
                            ("RECSYS_DEADLINE_MS", deadline),
                            ("RECSYS_ANN_MIN_ITEMS", ann_min_items),
                            ("RECSYS_EVALUATION_USERS", evaluation_users),
                            ("RECSYS_QUERY_CACHE", query_cache),
                            ("RECSYS_CONTENT_MAX_ITEMS", content_max_items),
                            ("RECSYS_RAY_CPUS", ray_cpus), ("RECSYS_RAY_MEMORY_MB", ray_memory)):
            if not value.isdigit() or int(value) < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        return cls(
            home=home,
            source=Path(source).expanduser().resolve() if source else None,
            redis_url=env.get("REDIS_URL") or None,
            events_url=env.get("RECSYS_EVENTS_URL") or None,
            mlflow_tracking_uri=env.get("MLFLOW_TRACKING_URI") or None,
            recent_items=int(recent),
            serving_threads=int(threads),
            future_tolerance_s=float(tolerance),
            redis_cluster=_flag(env, "RECSYS_REDIS_CLUSTER"),
            feast_offline_store=env.get("RECSYS_FEAST_OFFLINE_STORE") or None,
            api_key=env.get("RECSYS_API_KEY") or None,
            max_body_bytes=int(body),
            model_poll_s=int(poll),
            quantize=_flag(env, "RECSYS_QUANTIZE"),
            serving_workers=int(workers),
            access_log=_flag(env, "RECSYS_ACCESS_LOG"),
            tracing=_flag(env, "RECSYS_TRACING"),
            redis_timeout_ms=int(redis_timeout),
            deadline_ms=int(deadline),
            ann_min_items=int(ann_min_items),
            evaluation_users=int(evaluation_users),
            query_cache=int(query_cache),
            content_max_items=int(content_max_items),
            engine=engine,
            ray_address=env.get("RECSYS_RAY_ADDRESS") or None,
            ray_cpus=int(ray_cpus),
            ray_memory_mb=int(ray_memory),
            pseudonymise=_flag(env, "RECSYS_PSEUDONYMISE"),
            pseudonym_key=env.get("RECSYS_PSEUDONYM_KEY") or None,
            pseudonym_key_file=Path(env["RECSYS_PSEUDONYM_KEY_FILE"]).expanduser().resolve()
            if env.get("RECSYS_PSEUDONYM_KEY_FILE") else None,
        )

    def to_json(self) -> str:
        """Every field, as JSON (how Dagster resources carry the whole settings)."""
        values = asdict(self)
        values.pop("pseudonym_key")  # a secret: never written into run configs or logs
        return json.dumps({k: str(v) if isinstance(v, Path) else v for k, v in values.items()},
                          sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Settings:
        values = json.loads(text)
        unknown = set(values) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"unknown settings: {sorted(unknown)}")
        for name in ("home", "source", "pseudonym_key_file"):
            if values.get(name) is not None:
                values[name] = Path(values[name])
        values["pseudonym_key"] = os.environ.get("RECSYS_PSEUDONYM_KEY") or None
        return cls(**values)

    # Paths under the state directory: the only places the project writes.
    @property
    def offline_dir(self) -> Path:
        return self.home / "offline"

    @property
    def raw_events_dir(self) -> Path:
        """Raw event rows as read, one parquet part per ingested batch."""
        return self.offline_dir / "raw_events"

    @property
    def items_path(self) -> Path:
        """The item catalogue as ingested (``item_catalogue``)."""
        return self.offline_dir / "items.parquet"

    @property
    def training_set_path(self) -> Path:
        """The point-in-time training rows (``training_set``)."""
        return self.offline_dir / "training_set.parquet"

    @property
    def materialized_dir(self) -> Path:
        """Per-view marks of what was materialised online (incremental materialisation)."""
        return self.offline_dir / "materialized"

    @property
    def validated_events_dir(self) -> Path:
        """Validated events, one parquet part per ingested batch."""
        return self.offline_dir / "validated_events"

    @property
    def ingest_ledger(self) -> Path:
        """Which bytes of which event files have been ingested (see orchestration.ledger)."""
        return self.offline_dir / "ingest_ledger.json"

    @property
    def quarantine_dir(self) -> Path:
        return self.home / "quarantine"

    @property
    def event_log_dir(self) -> Path:
        return self.home / "event_log"

    @property
    def feast_dir(self) -> Path:
        return self.home / "feast"

    @property
    def redis_dir(self) -> Path:
        return self.home / "redis"

    @property
    def mlflow_dir(self) -> Path:
        return self.home / "mlflow"

    @property
    def mlflow_server_dir(self) -> Path:
        """``recsys mlflow-server``'s backend store and artifacts."""
        return self.home / "mlflow-server"

    @property
    def dagster_home(self) -> Path:
        return self.home / "dagster"

    @property
    def gx_dir(self) -> Path:
        """Great Expectations' file context (suites, checkpoints, validation results)."""
        return self.home / "gx"

    @property
    def run_dir(self) -> Path:
        """Pid files of the processes the project started (``recsys stop`` reads them)."""
        return self.home / "run"

    def pid_file(self, name: str) -> Path:
        return self.run_dir / f"{name}.pid"

    def log_file(self, name: str) -> Path:
        """Where a process the project started writes its output."""
        return self.home / f"{name}.log"

    @property
    def privacy_dir(self) -> Path:
        """Tombstones of forgotten users, the deletion audit log, the default key file."""
        return self.home / "privacy"

    @property
    def pseudonym_key_path(self) -> Path:
        return self.pseudonym_key_file or self.privacy_dir / "pseudonym.key"

    @property
    def data_docs_dir(self) -> Path:
        return self.home / "data_docs"

    @property
    def reports_dir(self) -> Path:
        """HTML reports a person opens (skew, drift, index)."""
        return self.home / "reports"

    @property
    def generated_source_dir(self) -> Path:
        return self.home / "generated_source"

    def tracking_uri(self) -> str:
        """MLflow tracking URI: the external one, or a SQLite store under home."""
        if self.mlflow_tracking_uri:
            return self.mlflow_tracking_uri
        return f"sqlite:///{self.mlflow_dir / 'mlflow.db'}"

    def artifact_location(self) -> str:
        return (self.mlflow_dir / "artifacts").as_uri()
