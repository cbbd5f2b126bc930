"""The behaviour encoder as plain files, rebuilt without unpickling anything.

A model directory holds:
- ``weights.safetensors``: the state dict (tensors only; safetensors has no code
  path, unlike a pickle, which runs whatever it names when loaded);
- ``model.json``: the format version, the ``EncoderConfig``, the item ids and
  titles (catalogue order) and the keys of the users with a learned vector
  (salted digests of their ids, with the salt: the file holds no user id);
- ``transitions.npz`` (when the model has them): the item transitions' arrays,
  read with ``allow_pickle=False``;
- ``ann.faiss``, ``ann_moments.npz``, ``ann.json`` (large catalogues): the item
  index of two-stage serving (``training.ann``).

Whoever can write to the registry can then change a model's numbers, never run
code in the processes that load it.
"""

from __future__ import annotations

import json
import secrets
from dataclasses import fields
from pathlib import Path

import numpy as np
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from training import ann
from training.model import BehaviourEncoder, EncoderConfig, user_key
from training.transitions import Lag, Transitions

FORMAT = 1
# Why a version from before this format is refused, and what to do.
NO_PICKLES = ("versions stored as pickles are no longer loaded, since loading a pickle runs "
              "code; retrain with the recsys_pipeline to register one in the weights format")
WEIGHTS, MANIFEST, TRANSITIONS = "weights.safetensors", "model.json", "transitions.npz"


class ModelFormatError(ValueError):
    """A model directory that is not what ``save_model`` writes (missing, tampered
    with, or an older format): nothing from it was executed."""


def save_model(model: BehaviourEncoder, directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    state = {name: tensor.detach().contiguous() for name, tensor in model.state_dict().items()}
    save_file(state, str(directory / WEIGHTS))
    users = sorted(model.user_index, key=model.user_index.get)
    salt = model.user_salt
    if salt is None:
        salt = secrets.token_hex(16)
        users = [user_key(salt, u) for u in users]
    (directory / MANIFEST).write_text(json.dumps({
        "format": FORMAT, "config": model.config.to_dict(), "item_ids": model.item_ids,
        "titles": model.titles, "user_keys": users, "user_salt": salt}))
    if model.transitions is not None:
        np.savez(directory / TRANSITIONS, **_transition_arrays(model.transitions))
    if model.ann is not None:
        ann.save(model.ann, directory)
    return directory


def load_model(directory: Path) -> BehaviourEncoder:
    """The model ``save_model`` wrote into ``directory``, in eval mode."""
    manifest = _read_manifest(directory)
    known = {f.name for f in fields(EncoderConfig)}
    config = EncoderConfig(**{k: v for k, v in manifest["config"].items() if k in known})
    if "user_keys" in manifest:
        model = BehaviourEncoder(config, manifest["item_ids"], manifest["titles"],
                                 manifest["user_keys"], user_salt=manifest["user_salt"])
    else:  # saved before user keys were digests
        model = BehaviourEncoder(config, manifest["item_ids"], manifest["titles"],
                                 manifest["user_ids"])
    try:
        state = load_file(str(directory / WEIGHTS))
    except (SafetensorError, OSError) as error:
        raise ModelFormatError(
            f"{directory / WEIGHTS} is not a safetensors file ({error}); the model is "
            "rejected and nothing in it was executed") from error
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as error:
        raise ModelFormatError(f"{directory / WEIGHTS} does not fit {MANIFEST}: {error}"
                               ) from error
    path = directory / TRANSITIONS
    if path.exists():
        try:
            with np.load(path, allow_pickle=False) as arrays:
                model.transitions = _transitions_from(dict(arrays))
        except (ValueError, KeyError, OSError) as error:
            raise ModelFormatError(f"{path} is not a transitions archive: {error}") from error
    try:
        model.ann = ann.load(directory)
    except (RuntimeError, ValueError, KeyError, TypeError, OSError) as error:
        raise ModelFormatError(f"{directory} holds no readable item index: {error}") from error
    return model.eval()


def _read_manifest(directory: Path) -> dict:
    path = directory / MANIFEST
    if not path.exists():
        raise ModelFormatError(
            f"{directory} has no {MANIFEST}: not a behaviour encoder in the weights format "
            f"({NO_PICKLES})")
    try:
        manifest = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ModelFormatError(f"{path} is not JSON: {error}") from error
    if manifest.get("format") != FORMAT:
        raise ModelFormatError(f"{path} has format {manifest.get('format')!r}, "
                               f"this release reads format {FORMAT}")
    return manifest


def _transition_arrays(transitions: Transitions) -> dict[str, np.ndarray]:
    arrays = {"n_items": np.array(transitions.n_items), "weight": np.array(transitions.weight),
              "popularity_weight": np.array(transitions.popularity_weight),
              "borrowed_weight": np.array(transitions.borrowed_weight),
              "lags": np.array(len(transitions.lags))}
    for lag, table in enumerate(transitions.lags):
        arrays |= {f"lag{lag}_indptr": table.indptr, f"lag{lag}_indices": table.indices,
                   f"lag{lag}_values": table.values}
    for name in ("popularity", "borrowers", "lenders", "shares"):
        value = getattr(transitions, name)
        if value is not None:
            arrays[name] = np.asarray(value)
    return arrays


def _transitions_from(arrays: dict[str, np.ndarray]) -> Transitions:
    lags = tuple(Lag(indptr=arrays[f"lag{lag}_indptr"], indices=arrays[f"lag{lag}_indices"],
                     values=arrays[f"lag{lag}_values"]) for lag in range(int(arrays["lags"])))
    return Transitions(n_items=int(arrays["n_items"]), lags=lags, weight=float(arrays["weight"]),
                       popularity_weight=float(arrays["popularity_weight"]),
                       # a checkpoint without it: the borrowers take the whole score
                       borrowed_weight=float(arrays.get("borrowed_weight", 1.0)),
                       **{name: arrays.get(name) for name in
                          ("popularity", "borrowers", "lenders", "shares")})

