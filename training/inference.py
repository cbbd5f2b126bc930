"""Inference-only forms of the behaviour encoder: attention rollout (the "because"
of an answer), int8 dynamic quantisation and the TorchScript trace the service runs."""

from __future__ import annotations

import copy
import warnings

import numpy as np
import torch
from torch import nn

from training.model import BehaviourEncoder


def attention_rollout(projections: np.ndarray, real: np.ndarray, heads: int) -> np.ndarray:
    """How much the last position's output draws on each input position through
    the attention layers (attention rollout, Abnar & Zuidema, 2020): each layer's
    attention averaged over heads and mixed half and half with its residual path,
    multiplied down from the last position. ``projections``: (L, B, T, 3D) from
    ``encode_explained``; ``real``: (B, T), False at padding. Returns (B, T), rows
    summing to 1, padding 0. In numpy: for one user it is cheaper than the same
    arithmetic as traced torch operations."""
    layers, batch, length, width = projections.shape
    dim = width // 3
    head_dim = dim // heads
    scaling = head_dim ** -0.5  # GPT-2's attention scaling
    identity = np.eye(length, dtype=projections.dtype)
    # Causal, to real items; a padding position to itself (no row without a key).
    allowed = np.tril(real[:, None, :] | identity.astype(bool))  # (B, T, T)
    mask = np.where(allowed, 0.0, -np.inf).astype(projections.dtype)[:, None]  # (B, 1, T, T)
    flow = None  # (B, T): the last position's share of each position, from the top down
    for layer in range(layers - 1, -1, -1):
        qkv = projections[layer]
        rows = slice(length - 1, length) if flow is None else slice(0, length)
        query = qkv[:, rows, :dim].reshape(batch, -1, heads, head_dim).transpose(0, 2, 1, 3)
        key = qkv[:, :, dim:2 * dim].reshape(batch, length, heads, head_dim).transpose(0, 2, 3, 1)
        logits = query @ key * scaling + mask[:, :, rows]  # (B, H, R, T)
        weights = np.exp(logits - logits.max(axis=-1, keepdims=True))
        weights /= weights.sum(axis=-1, keepdims=True)
        mixed = 0.5 * weights.mean(axis=1) + 0.5 * identity[rows]  # (B, R, T)
        flow = mixed[:, -1, :] if flow is None else (flow[:, None, :] @ mixed)[:, 0, :]
    flow = flow * real
    return flow / np.maximum(flow.sum(axis=1, keepdims=True), 1e-12)


def _linear_from_conv1d(layer: nn.Module) -> nn.Linear:
    """GPT-2's Conv1D is a linear layer with its weight transposed."""
    linear = nn.Linear(layer.nx, layer.nf)
    with torch.no_grad():
        linear.weight.copy_(layer.weight.T)
        linear.bias.copy_(layer.bias)
    return linear


def quantized(model: BehaviourEncoder) -> BehaviourEncoder:
    """A copy with the transformer's linear layers dynamically quantised to int8
    (weights int8, activations quantised per call); the item table, used for the
    embedding lookup and the final scores, stays float32. Inference only."""
    from torch.ao.quantization import quantize_dynamic
    from transformers.pytorch_utils import Conv1D

    clone = copy.deepcopy(model).eval()
    for module in list(clone.backbone.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, Conv1D):
                setattr(module, name, _linear_from_conv1d(child))
    with warnings.catch_warnings():  # torch.ao.quantization is deprecated for torchao
        warnings.simplefilter("ignore")
        clone.backbone = quantize_dynamic(clone.backbone, {nn.Linear}, dtype=torch.qint8)
    return clone


class _Encode(nn.Module):
    def __init__(self, model: BehaviourEncoder):
        super().__init__()
        self.model = model

    def forward(self, seq: torch.Tensor, users: torch.Tensor,
                ) -> tuple[torch.Tensor, torch.Tensor]:
        return self.model.encode_explained(seq, users)


def traced_encoder(model: BehaviourEncoder) -> torch.jit.ScriptModule:
    """``model.encode_explained`` as a TorchScript trace, called with (B, T)
    sequences and (B,) ``user_rows``: the same numbers, without the Python
    overhead of the Hugging Face forward (docs/serving.md, Scoring). Traced on a
    left-padded sequence, so the attention mask is part of the graph; inference only."""
    example = torch.zeros((1, model.config.max_len), dtype=torch.long)
    example[0, -3:] = torch.tensor([1, 2, 3]).clamp(max=model.config.n_items)
    with warnings.catch_warnings(), torch.inference_mode():
        warnings.simplefilter("ignore")  # TracerWarnings about Python-side branches
        return torch.jit.trace(_Encode(model).eval(), (example, torch.zeros(1, dtype=torch.long)),
                               check_trace=False)
