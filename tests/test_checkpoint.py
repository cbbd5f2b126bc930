"""The behaviour encoder stored as weights and plain files: what is saved is what
is loaded, and a tampered registry cannot run code in a process that loads it."""

import pickle

import numpy as np
import pandas as pd
import pytest
import torch

from training import registry
from training.checkpoint import WEIGHTS, ModelFormatError, load_model, save_model
from training.model import BehaviourEncoder, EncoderConfig
from training.sequences import pad_left
from training.transitions import Transitions

ITEMS = [f"i{n}" for n in range(1, 7)]


def small_model() -> BehaviourEncoder:
    torch.manual_seed(3)
    config = EncoderConfig(n_items=6, max_len=4, hidden=8, layers=1, heads=1,
                           temperature=0.1, n_users=2)
    model = BehaviourEncoder(config, ITEMS, [f"Title {i}" for i in ITEMS], ["u1", "u2"]).eval()
    counts = Transitions.count([[1, 2, 3], [2, 3, 4], [1, 5]], n_items=6, lags=2)
    model.transitions = counts.weighted(0.2, 0.1).borrowing(
        np.array([6]), np.array([[1, 2]]), np.array([[0.5, 0.5]], dtype=np.float32))
    return model


def test_saved_model_scores_exactly_as_the_trained_one(tmp_path):
    model = small_model()
    loaded = load_model(save_model(model, tmp_path / "encoder"))
    seq, users = pad_left([[1, 2], [3]], 4), model.user_rows(["u2", "stranger"])
    with torch.inference_mode():
        assert torch.equal(loaded.score(seq, users), model.score(seq, users))
    assert loaded.config == model.config and loaded.item_ids == ITEMS
    assert loaded.user_index == {"u1": 1, "u2": 2}
    assert loaded.transitions.weight == 0.2 and loaded.transitions.popularity_weight == 0.1
    assert loaded.transitions.borrowers.tolist() == [6]
    assert not loaded.training


class Planted:
    """A pickle that, if anything unpickled it, would create ``marker``."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_a_pickle_planted_in_the_registry_is_rejected_and_never_runs(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    artifacts = (tmp_path / "artifacts").as_uri()
    registered = registry.log_and_register(
        uri, artifacts, small_model(), {"purpose": "test"}, [], {"ndcg_at_10": 0.5}, {})
    served = registry.load_version(uri, registered.version)
    assert served.item_ids == ITEMS
    # The pyfunc wrapper for the UI and `mlflow models serve` answers its input example.
    import mlflow.pyfunc

    pyfunc = mlflow.pyfunc.load_model(f"models:/{registry.MODEL_NAME}/{registered.version}")
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
