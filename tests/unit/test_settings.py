"""Settings: read from the environment, validated, carried whole as JSON."""

from pathlib import Path

import pytest

from infra.settings import Settings


def test_settings_from_env(tmp_path):
    s = Settings.from_env({"RECSYS_HOME": str(tmp_path), "RECSYS_SOURCE": str(tmp_path / "src"),
                           "REDIS_URL": "redis://h:1/0", "MLFLOW_TRACKING_URI": "http://m:5000"})
    assert s.home == tmp_path
    assert s.source == tmp_path / "src"
    assert s.redis_url == "redis://h:1/0"
    assert s.tracking_uri() == "http://m:5000"
    assert s.quarantine_dir == tmp_path / "quarantine"


def test_settings_defaults(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    s = Settings.from_env({})
    assert s.home == tmp_path / ".recsys"
    assert s.source is None and s.redis_url is None
    assert s.tracking_uri() == f"sqlite:///{tmp_path / '.recsys' / 'mlflow' / 'mlflow.db'}"


def test_settings_travel_whole_through_json(tmp_path):
    """Dagster resources carry Settings as JSON: every field, non-default values included."""
    s = Settings.from_env({"RECSYS_HOME": str(tmp_path), "RECSYS_SOURCE": str(tmp_path / "src"),
                           "REDIS_URL": "redis://n1:7000", "RECSYS_REDIS_CLUSTER": "true",
                           "RECSYS_FEAST_OFFLINE_STORE": '{"type": "file"}',
                           "RECSYS_RECENT_ITEMS": "7", "RECSYS_QUANTIZE": "1",
                           "RECSYS_ENGINE": "Ray", "RECSYS_RAY_ADDRESS": "ray://head:10001",
                           "RECSYS_RAY_CPUS": "8", "RECSYS_CONTENT_MAX_ITEMS": "500000"})
    back = Settings.from_json(s.to_json())
    assert back == s and back.redis_cluster and back.recent_items == 7
    assert back.content_max_items == 500_000
    assert (back.engine, back.ray_address, back.ray_cpus, back.ray_memory_mb) == (
        "ray", "ray://head:10001", 8, 4096)
    assert isinstance(back.home, Path) and back.source == tmp_path / "src"
    with pytest.raises(ValueError, match="unknown settings"):
        Settings.from_json('{"home": "/x", "colour": "red"}')


def test_settings_reject_bad_numbers():
    try:
        Settings.from_env({"RECSYS_RECENT_ITEMS": "zero"})
    except ValueError as error:
        assert "RECSYS_RECENT_ITEMS" in str(error)
    else:
        raise AssertionError("a non-numeric RECSYS_RECENT_ITEMS was accepted")


@pytest.mark.parametrize("variable, value", [("RECSYS_ENGINE", "spark"),
                                             ("RECSYS_RAY_CPUS", "0"),
                                             ("RECSYS_RAY_MEMORY_MB", "4G")])
def test_settings_reject_an_unknown_engine_and_bad_ray_bounds(variable, value):
    with pytest.raises(ValueError, match=variable):
        Settings.from_env({variable: value})
