"""The behaviour-sequence encoder: a causal transformer (Hugging Face GPT-2
blocks, built from a config and trained from scratch) over item-id sequences.

Only ``nn.Module``s and their config live here: no I/O, no environment reads.
"""

from __future__ import annotations

import hashlib
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
    # > 0: scores are cosine similarities / temperature (unit user and item vectors);
    # 0: plain dot products.
    temperature: float = 0.0
    # > 0: a learned vector per training user (rows 1..n_users; row 0, zero, for
    # anyone else) added to every input position: what the user's whole history
    # says beyond the last max_len items. ``user_dropout``: the share of training
    # windows read without it, so that users the model never saw are served well.
    n_users: int = 0
    user_dropout: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)


def user_key(salt: str, user_id: str) -> str:
    """How a saved model keys its user table: a salted SHA-256 of the (stored) id,
    so that the artifact carries neither the id nor its pseudonym."""
    return hashlib.sha256(f"{salt}:{user_id}".encode()).hexdigest()[:32]


class BehaviourEncoder(nn.Module):
    """Item sequence -> user vector; scores = user vector . item embedding table.

    ``item_ids`` (catalogue order, index i+1 <-> item_ids[i]), ``titles`` and
    ``user_ids`` (the users with a learned vector, row i+1 <-> user_ids[i]) travel
    with the weights, so the served model needs nothing else; so does
    ``transitions`` (``training.transitions.Transitions``, set after training),
    blended into ``score`` by ``blend_transitions``, and, for large catalogues,
    ``ann`` (``training.ann.AnnIndex``, set at registration) for two-stage serving.
    """

    def __init__(self, config: EncoderConfig, item_ids: list[str], titles: list[str],
                 user_ids: list[str] = (), user_salt: str | None = None):
        """``user_salt``: ``user_ids`` are ``user_key(user_salt, id)`` digests (a saved
        model holds no user id: docs/privacy.md)."""
        super().__init__()
        if len(item_ids) != config.n_items or len(titles) != config.n_items:
            raise ValueError("item_ids and titles must have config.n_items entries")
        if len(user_ids) != config.n_users:
            raise ValueError("user_ids must have config.n_users entries")
        self.config = config
        self.item_ids = list(item_ids)
        self.titles = list(titles)
        self.user_salt = user_salt
        self.user_index = {user: row + 1 for row, user in enumerate(user_ids)}
        self.transitions = None
        self.ann = None
        self.item_embedding = nn.Embedding(config.n_items + 1, config.hidden, padding_idx=PAD)
        nn.init.normal_(self.item_embedding.weight, std=0.02)
        self.user_embedding = None
        if config.n_users:
            self.user_embedding = nn.Embedding(config.n_users + 1, config.hidden, padding_idx=0)
            nn.init.normal_(self.user_embedding.weight, std=0.02)
            with torch.no_grad():
                self.user_embedding.weight[0].zero_()
        self.backbone = GPT2Model(GPT2Config(
            vocab_size=1, bos_token_id=None, eos_token_id=None,
            n_positions=config.max_len, n_embd=config.hidden, n_layer=config.layers,
            n_head=config.heads, n_inner=config.hidden * 4,
            resid_pdrop=config.dropout, embd_pdrop=config.dropout,
            attn_pdrop=config.dropout, use_cache=False,
            # GPT-2's tanh-approximated GELU as one fused op: the same function as
            # transformers' default "gelu_new" (seven ops), in less time per epoch.
            activation_function="gelu_pytorch_tanh",
        ))

    def user_rows(self, user_ids: list[str | None]) -> torch.Tensor:
        """(B,) rows of the user table; 0 (no user vector) for users without one."""
        if self.user_salt is not None:
            user_ids = [None if u is None else user_key(self.user_salt, u) for u in user_ids]
        return torch.tensor([self.user_index.get(user, 0) for user in user_ids], dtype=torch.long)

    def has_user_vector(self, user_id: str) -> bool:
        key = user_id if self.user_salt is None else user_key(self.user_salt, user_id)
        return key in self.user_index

    def hidden_states(self, seq: torch.Tensor, users: torch.Tensor | None = None,
                      ) -> torch.Tensor:
        """seq: (B, T) left-padded item indices, users: (B,) ``user_rows`` or None
        -> (B, T, D)."""
        mask = (seq != PAD).long()
        positions = (mask.cumsum(dim=1) - 1).clamp(min=0)
        x = self.item_embedding(seq)  # (B, T, D)
        table = self.user_embedding
        if table is not None and users is not None:
            if self.training and self.config.user_dropout > 0:
                users = users.masked_fill(
                    torch.rand(users.shape, device=users.device) < self.config.user_dropout, 0)
            x = x + table(users)[:, None, :]
        x = x * math.sqrt(self.config.hidden)
        out = self.backbone(inputs_embeds=x, attention_mask=mask, position_ids=positions)
        return out.last_hidden_state  # (B, T, D)

    def item_table(self) -> torch.Tensor:
        return self.item_embedding.weight  # (N + 1, D)

    def _scaled(self, users: torch.Tensor, items: torch.Tensor,
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """User and item vectors whose dot products are the scores."""
        temperature = self.config.temperature
        if temperature > 0:
            return (nn.functional.normalize(users, dim=-1) / temperature,
                    nn.functional.normalize(items, dim=-1))
        return users, items

    def logits(self, users: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
        """(..., D) user vectors x (N + 1, D) item table -> (..., N + 1) scores."""
        users, table = self._scaled(users, table)
        return users @ table.T

    def forward(self, seq: torch.Tensor, targets: torch.Tensor,
                negatives: int = 0, label_smoothing: float = 0.0,
                users: torch.Tensor | None = None) -> torch.Tensor:
        """Training: mean cross-entropy of the next item at every position.

        seq, targets: (B, T); targets == PAD are ignored. ``negatives`` = 0: full
        softmax over the catalogue; > 0: sampled softmax, each position's target
        against ``negatives`` items drawn uniformly (with replacement) and shared
        by the batch, for catalogues too large to score whole; the target is
        masked where it was drawn. A uniform proposal needs no log-Q correction
        (it is the same constant for every item). With ``negatives`` >= the
        catalogue size every other item is a negative: the full softmax.
        ``label_smoothing``: the share of each target's probability spread evenly
        over the classes (the catalogue's items; padding is no class).
        ``users``: (B,) ``user_rows`` of the windows' users, or None.
        """
        states = self.hidden_states(seq, users)
        real = targets != PAD  # only positions with a target: no work spent on padding
        queries, wanted = states[real], targets[real]  # (M, D), (M,)
        table = self.item_table()
        n_items = table.shape[0] - 1
        if negatives <= 0 or negatives >= n_items:
            logits = self.logits(queries, table[1:])  # (M, N): padding is no class
            return nn.functional.cross_entropy(logits, wanted - 1,
                                               label_smoothing=label_smoothing)
        drawn = torch.randint(1, n_items + 1, (negatives,), device=table.device)  # (S,)
        # Looked up, not indexed: with a sparse item embedding (training.train on
        # large catalogues) the gradient holds only these rows.
        sparse = self.item_embedding.sparse
        scaled, own = self._scaled(queries, nn.functional.embedding(wanted, table, sparse=sparse))
        positive = (scaled * own).sum(dim=-1, keepdim=True)  # (M, 1)
        negative = self.logits(queries, nn.functional.embedding(
            drawn, table, sparse=sparse)).masked_fill(
            drawn[None, :] == wanted[:, None], float("-inf"))  # (M, S)
        logits = torch.cat([positive, negative], dim=1)  # the target is class 0
        if not label_smoothing:
            return nn.functional.cross_entropy(logits, torch.zeros_like(wanted))
        # Smoothing as cross_entropy spreads it (over every class of the row), but
        # over the classes a row has: a masked draw is no class, and would make the
        # loss infinite.
        log_p = nn.functional.log_softmax(logits, dim=1)
        valid = torch.isfinite(logits)
        spread = -log_p.masked_fill(~valid, 0.0).sum(dim=1) / valid.sum(dim=1)
        return ((1 - label_smoothing) * -log_p[:, 0] + label_smoothing * spread).mean()

    def encode(self, seq: torch.Tensor, users: torch.Tensor | None = None) -> torch.Tensor:
        """Inference: (B, T) left-padded sequences (and (B,) ``user_rows``) -> (B, D)
        user vectors (last position)."""
        return self.hidden_states(seq, users)[:, -1, :]

    def encode_explained(self, seq: torch.Tensor, users: torch.Tensor | None = None,
                         ) -> tuple[torch.Tensor, torch.Tensor]:
        """Inference: (B, T) [, (B,)] -> (B, D) user vectors and (L, B, T, 3D) each layer's
        query/key/value projections (bottom first), recorded as the forward
        computes them: ``attention_rollout`` explains the vectors from them."""
        projections: list[torch.Tensor] = []

        def record(module, args, output):
            projections.append(output)

        hooks = [block.attn.c_attn.register_forward_hook(record) for block in self.backbone.h]
        try:
            vectors = self.encode(seq, users)
        finally:
            for hook in hooks:
                hook.remove()
        return vectors, torch.stack(projections)

    def blend_transitions(self, scores: torch.Tensor, seq: torch.Tensor) -> torch.Tensor:
        """(B, N + 1) ``logits`` for the (B, T) histories ``seq`` with the item
        transitions blended in, when the model has them (else as they are)."""
        transitions = self.transitions
        return scores if transitions is None else transitions.blend(scores, seq)

    def encoder_scores(self, seq: torch.Tensor, users: torch.Tensor | None = None,
                       ) -> torch.Tensor:
        """(B, T) [, (B,) ``user_rows``] -> (B, N + 1) the encoder's own ``logits``
        over the catalogue, before any blend."""
        return self.logits(self.encode(seq, users), self.item_table())

    def score(self, seq: torch.Tensor, users: torch.Tensor | None = None) -> torch.Tensor:
        """(B, T) [, (B,) ``user_rows``] -> (B, N + 1) scores over the catalogue;
        padding scores -inf."""
        scores = self.blend_transitions(self.encoder_scores(seq, users), seq)
        scores[:, PAD] = float("-inf")
        return scores
