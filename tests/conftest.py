"""Shared fixtures. The expensive ones (one pipeline run, one real server) are
session-scoped: every test reads the same state."""

import os
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from infra import redis_server
from infra.settings import Settings

ML100K = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "ml-100k"
SMALL = {"generator_users": 300, "generator_items": 200, "generator_events": 12_000}
EPOCHS = 6


@dataclass
class PipelineRun:
    settings: Settings
    result: object  # dagster ExecuteInProcessResult

    def metadata(self, asset: str) -> dict:
        for event in self.result.get_asset_materialization_events():
            if event.asset_key.to_user_string() == asset:
                return {k: v.value for k, v in event.materialization.metadata.items()}
        raise KeyError(asset)


@pytest.fixture(scope="session")
def pipeline(tmp_path_factory) -> PipelineRun:
    """The whole asset graph materialised once on small generated data, against
    the embedded Redis and a local MLflow store in a temporary RECSYS_HOME."""
    from dagster import materialize

    from orchestration.definitions import ASSETS, CHECKS
    from orchestration.resources import resources_from_settings

    settings = Settings(home=tmp_path_factory.mktemp("recsys_home"))
    resources = resources_from_settings(settings, **SMALL)
    from orchestration.lineage import instance_for

    result = materialize(
        [*ASSETS, *CHECKS], resources=resources, instance=instance_for(settings),
        run_config={"ops": {"behaviour_encoder_version": {"config": {"epochs": EPOCHS}}}},
    )
    assert result.success
    yield PipelineRun(settings=settings, result=result)
    redis_server.stop(settings)


def wait_for(condition, timeout: float = 10.0, step: float = 0.05):
    """``condition()``'s first true value within ``timeout`` (else TimeoutError)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(step)
    raise TimeoutError(f"not within {timeout}s")


API_KEY = "test-key-not-secret"
AUTH = {"X-API-Key": API_KEY}


@pytest.fixture(scope="session")
def service(pipeline):
    """``bentoml serve`` as a real process on a free port against the pipeline's
    state, with an API key (``AUTH``) and a 1 s champion poll."""
    from infra.processes import free_port
    from orchestration.cli import start_service, stop_service, wait_ready

    port = free_port()
    process = start_service(pipeline.settings, port, pipeline.settings.home / "serve.log",
                            env={"RECSYS_API_KEY": API_KEY, "RECSYS_MODEL_POLL_S": "1"})
    try:
        wait_ready(port, process)
    except Exception:
        stop_service(pipeline.settings)
        print((pipeline.settings.home / "serve.log").read_text()[-5000:])
        raise
    yield f"http://127.0.0.1:{port}"
    stop_service(pipeline.settings)


@pytest.fixture
def home(tmp_path, monkeypatch) -> Settings:
    """A fresh, empty RECSYS_HOME (its embedded Redis stopped afterwards)."""
    monkeypatch.setenv("RECSYS_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("REDIS_URL", raising=False)
    settings = Settings.from_env()
    yield settings
    redis_server.stop(settings)


def pytest_configure(config):
    os.environ.setdefault("GIT_PYTHON_REFRESH", "quiet")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
