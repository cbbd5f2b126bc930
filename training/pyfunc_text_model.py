"""``item_text_encoder`` as an MLflow pyfunc, logged as "models from code" (this
file is the model's code; nothing is pickled): item texts in, unit embeddings
out, the model directory travelling as the ``model_dir`` artifact. The
platform's own loaders read that directory (``registry.text_encoder_dir``) and
never run this module.
"""

from __future__ import annotations

from pathlib import Path

import mlflow.pyfunc
from mlflow.models import set_model


class TextEncoderModel(mlflow.pyfunc.PythonModel):
    def load_context(self, context) -> None:
        from training.text_encoder import TextEncoder

        self.encoder = TextEncoder(Path(context.artifacts["model_dir"]))

    def predict(self, context, model_input: list[str], params=None) -> list[list[float]]:
        """Texts (a list, or a one-column DataFrame) -> unit embeddings."""
        return self.encoder.encode(list(model_input)).tolist()


set_model(TextEncoderModel())
