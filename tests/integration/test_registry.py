"""A registered behaviour_encoder version in a real MLflow store: the platform
loads its weights and files, and a tampered registry cannot run code here."""

import pickle

import pandas as pd
import pytest
import torch

from tests.unit.test_checkpoint import ITEMS, small_model
from training import registry
from training.checkpoint import WEIGHTS, ModelFormatError


class Planted:
    """A pickle that, if anything unpickled it, would create ``marker``."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_a_pickle_planted_in_the_registry_is_rejected_and_never_runs(tmp_path, monkeypatch):
    import mlflow.pyfunc

    from training import checkpoint

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    artifacts = (tmp_path / "artifacts").as_uri()
    loads = []
    load = checkpoint.load_model
    monkeypatch.setattr(checkpoint, "load_model", lambda *a, **k: loads.append(a) or load(*a, **k))
    registered = registry.log_and_register(
        uri, artifacts, small_model(), {"purpose": "test"}, [], {"ndcg_at_10": 0.5}, {})
    # Logging states the pyfunc's signature: MLflow loads no copy of the model.
    assert loads == []
    model_uri = f"models:/{registry.MODEL_NAME}/{registered.version}"
    assert mlflow.models.get_model_info(model_uri).signature == registry.PYFUNC_SIGNATURE
    served = registry.load_version(uri, registered.version)
    assert served.item_ids == ITEMS
    # The pyfunc wrapper for the UI and `mlflow models serve` answers a history.
    pyfunc = mlflow.pyfunc.load_model(model_uri)
    assert len(loads) == 1
    top = pyfunc.predict(pd.DataFrame({"item_ids": [["i1", "i2"]]}))
    assert len(top["item_ids"][0]) == 4 and not {"i1", "i2"} & set(top["item_ids"][0])

    weights = next(tmp_path.joinpath("artifacts").rglob(WEIGHTS))
    marker = tmp_path / "code-ran"
    weights.write_bytes(pickle.dumps(Planted(marker)))
    with pytest.raises(ModelFormatError, match="not a safetensors file"):
        registry.load_version(uri, registered.version)
    assert not marker.exists()
    # A torch pickle (the old format) in its place fails the same way.
    torch.save(small_model(), weights)
    with pytest.raises(ModelFormatError, match="nothing in it was executed"):
        registry.load_version(uri, registered.version)


def test_an_unreachable_registry_is_an_error_not_a_missing_champion(tmp_path, monkeypatch):
    from mlflow.exceptions import MlflowException

    from infra.processes import free_port

    assert registry.alias_version(f"sqlite:///{tmp_path / 'mlflow.db'}", "champion") is None
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    with pytest.raises(MlflowException, match="failed with exception"):
        registry.alias_version(f"http://127.0.0.1:{free_port()}", "champion")


def test_the_logged_dataset_is_mlflows_own_without_its_pass_over_every_value():
    """Digest and schema equal ``mlflow.data.from_pandas``'s on a frame longer
    than the rows the digest reads, whose only missing value is past them."""
    import mlflow.data
    import numpy as np
    from mlflow.data.digest_utils import MAX_ROWS

    n = MAX_ROWS + 50
    frame = pd.DataFrame({
        "user_id": [f"u{i % 97}" for i in range(n)], "item_id": [f"i{i % 31}" for i in range(n)],
        "event_type": ["view"] * n,
        "event_timestamp": pd.to_datetime(np.arange(n), unit="s", utc=True),
        "rating": np.where(np.arange(n) == n - 3, np.nan, 4.0)})
    ours = registry.logged_dataset(frame, "/data/events", "validated_events")
    theirs = mlflow.data.from_pandas(frame, source="/data/events", name="validated_events")
    assert ours.digest == theirs.digest
    assert ours.schema == theirs.schema
    assert [c.required for c in ours.schema.inputs] == [True, True, True, True, False]
    assert ours.to_dict() == theirs.to_dict()
