"""Fixtures of the dataset tests: small files written in the real formats, a tiny tokenizer."""

from __future__ import annotations

import inspect
from pathlib import Path

import numpy as np
import pytest

WORDS = [
    "a",
    "man",
    "is",
    "playing",
    "guitar",
    "the",
    "woman",
    "dog",
    "cat",
    "running",
    "in",
    "park",
    "two",
    "people",
    "are",
    "on",
    "street",
    "someone",
    "plays",
    "an",
    "instrument",
    "kids",
    "child",
    "boy",
    "girl",
    "sitting",
    "eating",
    "food",
    "black",
    "white",
    "red",
    "ball",
    "grass",
    "water",
    "riding",
    "horse",
    "nobody",
    "no",
    "not",
    "und",
    "der",
    "ein",
    "hund",
    "el",
    "perro",
    "un",
    "gato",
    "一",
    "个",
    "人",
]


@pytest.fixture
def tiny_tokenizer(tmp_path: Path):
    """A BERT WordPiece tokenizer over a 60-word vocabulary (written to a tmp file; no download)."""
    transformers = pytest.importorskip("transformers")
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ".", ",", *WORDS]
    vocab = list(dict.fromkeys(vocab))
    path = tmp_path / "vocab.txt"
    path.write_text("\n".join(vocab) + "\n", encoding="utf-8")
    if "vocab" in inspect.signature(transformers.BertTokenizer.__init__).parameters:  # transformers >= 5
        tok = transformers.BertTokenizer(vocab={w: i for i, w in enumerate(vocab)}, do_lower_case=True)
    else:
        tok = transformers.BertTokenizerFast(vocab_file=str(path), do_lower_case=True)
    assert tok.vocab_size == len(vocab)
    assert tok.convert_tokens_to_ids("guitar") == vocab.index("guitar")
    return tok


def digit_sources(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Random 28x28 uint8 'digits' with labels 0..9."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8), rng.integers(0, 10, size=n).astype(np.uint8)
