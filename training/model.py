"""The behaviour-sequence encoder: a causal transformer (Hugging Face GPT-2
blocks, built from a config and trained from scratch) over item-id sequences.

Only ``nn.Module``s and their config live here: no I/O, no environment reads.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from torch import nn
from transformers import GPT2Config, GPT2Model

PAD = 0  # item index 0 is padding; catalogue items are 1..n_items


@dataclass(frozen=True)
class EncoderConfig:
    n_items: int
    max_len: int = 50
    hidden: int = 64
    layers: int = 2
    heads: int = 1
    dropout: float = 0.2

    def to_dict(self) -> dict:
        return asdict(self)


class BehaviourEncoder(nn.Module):
    """Item sequence -> user vector; scores = user vector . item embedding table.

    ``item_ids`` (catalogue order, index i+1 <-> item_ids[i]) and ``titles``
    travel with the weights, so the served model needs nothing else.
    """

    def __init__(self, config: EncoderConfig, item_ids: list[str], titles: list[str]):
        super().__init__()
        if len(item_ids) != config.n_items or len(titles) != config.n_items:
            raise ValueError("item_ids and titles must have config.n_items entries")
        self.config = config
        self.item_ids = list(item_ids)
        self.titles = list(titles)
        self.item_embedding = nn.Embedding(config.n_items + 1, config.hidden, padding_idx=PAD)
        nn.init.normal_(self.item_embedding.weight, std=0.02)
        self.backbone = GPT2Model(GPT2Config(
            vocab_size=1, bos_token_id=None, eos_token_id=None,
            n_positions=config.max_len, n_embd=config.hidden, n_layer=config.layers,
            n_head=config.heads, n_inner=config.hidden * 4,
            resid_pdrop=config.dropout, embd_pdrop=config.dropout,
            attn_pdrop=config.dropout, use_cache=False,
        ))

    def hidden_states(self, seq: torch.Tensor) -> torch.Tensor:
        """seq: (B, T) left-padded item indices -> (B, T, D)."""
        mask = (seq != PAD).long()
        positions = (mask.cumsum(dim=1) - 1).clamp(min=0)
        x = self.item_embedding(seq) * math.sqrt(self.config.hidden)  # (B, T, D)
        out = self.backbone(inputs_embeds=x, attention_mask=mask, position_ids=positions)
        return out.last_hidden_state  # (B, T, D)

    def item_table(self) -> torch.Tensor:
        return self.item_embedding.weight  # (N + 1, D)

    def forward(self, seq: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Training: mean full-softmax cross-entropy of the next item at every position.

        seq, targets: (B, T); targets == PAD are ignored.
        """
        logits = self.hidden_states(seq) @ self.item_table().T  # (B, T, N + 1)
        logits[..., PAD] = float("-inf")
        return nn.functional.cross_entropy(
            logits.reshape(-1, logits.size(-1)), targets.reshape(-1), ignore_index=PAD)

    def encode(self, seq: torch.Tensor) -> torch.Tensor:
        """Inference: (B, T) left-padded sequences -> (B, D) user vectors (last position)."""
        return self.hidden_states(seq)[:, -1, :]

    def score(self, seq: torch.Tensor) -> torch.Tensor:
        """(B, T) -> (B, N + 1) scores over the catalogue; padding scores -inf."""
        scores = self.encode(seq) @ self.item_table().T
        scores[:, PAD] = float("-inf")
        return scores
