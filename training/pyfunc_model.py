"""``behaviour_encoder`` as an MLflow pyfunc, logged as "models from code" (this
file is the model's code; nothing is pickled), for the MLflow UI and
``mlflow models serve``. The platform's own loaders read the plain files
(``training.checkpoint``) and never run this module.
"""

from __future__ import annotations

from pathlib import Path

import mlflow.pyfunc
import numpy as np
import pandas as pd
import torch
from mlflow.models import set_model

TOP_K = 10


class BehaviourEncoderPyfunc(mlflow.pyfunc.PythonModel):
    """A frame with an ``item_ids`` column (each row a history, oldest first) in;
    the top ``TOP_K`` unseen item ids and their scores out."""

    def load_context(self, context) -> None:
        from training.checkpoint import load_model

        self.model = load_model(Path(context.artifacts["encoder"]))
        self.position = {item: row + 1 for row, item in enumerate(self.model.item_ids)}

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        from training.sequences import pad_left

        histories = [[self.position[i] for i in items if i in self.position]
                     for items in model_input["item_ids"]]
        with torch.inference_mode():
            scores = self.model.score(pad_left(histories, self.model.config.max_len)).numpy()
        out = {"item_ids": [], "scores": []}
        for row, seen in zip(scores, histories, strict=True):
            row[seen] = -np.inf  # column 0 (padding) is -inf already
            top = [i for i in np.argsort(-row, kind="stable")[:TOP_K] if np.isfinite(row[i])]
            out["item_ids"].append([self.model.item_ids[i - 1] for i in top])
            out["scores"].append([float(row[i]) for i in top])
        return pd.DataFrame(out)


set_model(BehaviourEncoderPyfunc())
