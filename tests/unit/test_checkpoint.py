"""The behaviour encoder stored as weights and plain files: what is saved is what
is loaded, and a tampered registry cannot run code in a process that loads it."""

import numpy as np
import torch

from training.checkpoint import load_model, save_model
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
        np.array([6]), np.array([[1, 2]]), np.array([[0.5, 0.5]], dtype=np.float32),
    ).lending(0.25)
    return model


def test_saved_model_scores_exactly_as_the_trained_one(tmp_path):
    model = small_model()
    loaded = load_model(save_model(model, tmp_path / "encoder"))
    seq, users = pad_left([[1, 2], [3]], 4), model.user_rows(["u2", "stranger"])
    with torch.inference_mode():
        assert torch.equal(loaded.score(seq, users), model.score(seq, users))
    assert loaded.config == model.config and loaded.item_ids == ITEMS
    # Users are found by their id; the saved manifest holds digests, not the ids.
    assert loaded.user_rows(["u1", "u2", "stranger"]).tolist() == [1, 2, 0]
    assert loaded.has_user_vector("u2") and not loaded.has_user_vector("stranger")
    manifest = (tmp_path / "encoder" / "model.json").read_text()
    assert '"u1"' not in manifest and '"u2"' not in manifest
    assert load_model(save_model(loaded, tmp_path / "again")).user_rows(["u2"]).tolist() == [2]
    assert loaded.transitions.weight == 0.2 and loaded.transitions.popularity_weight == 0.1
    assert loaded.transitions.borrowers.tolist() == [6]
    assert loaded.transitions.borrowed_weight == 0.25
    assert not loaded.training
