"""PAWS-X (Yang et al., EMNLP 2019): paraphrase identification in 4 languages as 4 tasks, multi-input.

Files (``<root>`` = the data folder or its ``pawsx/`` sub-folder), the layout written by the XTREME
download script that LibMTL's example uses::

    <root>/{train,dev,test}-{en,zh,de,es}.tsv

Each line is ``sentence1 <tab> sentence2 <tab> label`` (label 0 or 1). The original x-final layout
with a header ``id sentence1 sentence2 label`` is read as well (the header decides the columns).
Splits: train / dev (= validation) / test. Pairs are pre-tokenised as ``[CLS] s1 [SEP] s2 [SEP]``
(``max_length`` 128, LibMTL) with the tokenizer of the encoder folder given as ``model_path`` (e.g. a
local copy of ``bert-base-multilingual-cased``; nothing is downloaded). Each split is a dict
``language -> Dataset`` yielding ``({"input_ids", "token_type_ids"}, label)``; :func:`collate_pair_ids`
pads a batch and adds the attention mask.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from benchmarks.datasets._errors import CorruptDataError, DatasetError, MissingDataError, missing_files_message
from benchmarks.datasets._files import resolve_data_dir
from benchmarks.datasets._registry import register
from benchmarks.datasets._spec import BenchmarkData, DatasetSpec, Protocol, TaskSpec, cap, metric
from benchmarks.datasets._text import pad, resolve_tokenizer, tokenize_pairs

LANGUAGES = ("en", "zh", "de", "es")
FILE_SPLITS = {"train": "train", "val": "dev", "test": "test"}
WHERE = (
    "PAWS-X (github.com/google-research-datasets/paws, x-final.tar.gz), converted to {split}-{lang}.tsv by the "
    "XTREME download script (github.com/google-research/xtreme, scripts/download_data.sh); a multilingual BERT "
    "(bert-base-multilingual-cased) saved to a local folder passed as model_path"
)


def find_root(data_dir: Path) -> Path:
    for c in (data_dir, data_dir / "pawsx", data_dir / "paws-x"):
        if (c / "train-en.tsv").is_file():
            return c
    expected = [str(data_dir / f"{s}-{lang}.tsv") for s in FILE_SPLITS.values() for lang in LANGUAGES]
    raise MissingDataError(missing_files_message("pawsx", data_dir, expected, WHERE))


def read_tsv(path: Path) -> list[tuple[str, str, int]]:
    """``[(sentence1, sentence2, label)]`` of one file; bad rows raise an error naming the line."""
    rows = []
    with open(path, encoding="utf-8", newline="") as fh:
        reader = csv.reader(fh, delimiter="\t", quoting=csv.QUOTE_NONE)
        cols = (0, 1, 2)
        for lineno, row in enumerate(reader, start=1):
            if lineno == 1 and "sentence1" in row:
                try:
                    cols = (row.index("sentence1"), row.index("sentence2"), row.index("label"))
                except ValueError:
                    raise CorruptDataError(f"{path}: header {row} lacks sentence1, sentence2 or label") from None
                continue
            if not row or all(not v.strip() for v in row):
                continue
            if len(row) <= max(cols):
                raise CorruptDataError(f"{path}, line {lineno}: {len(row)} columns, expected s1<tab>s2<tab>label")
            label = row[cols[2]].strip()
            if label not in ("0", "1"):
                raise CorruptDataError(f"{path}, line {lineno}: label {label!r} is not 0 or 1")
            rows.append((row[cols[0]], row[cols[1]], int(label)))
    return rows


class PairIdsDataset(Dataset):
    def __init__(self, encoded: list[tuple[torch.Tensor, torch.Tensor]], labels: list[int]) -> None:
        self.encoded = encoded
        self.labels = torch.tensor(labels, dtype=torch.long)

    def __len__(self) -> int:
        return len(self.encoded)

    def __getitem__(self, i: int) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        ids, types = self.encoded[i]
        return {"input_ids": ids, "token_type_ids": types}, self.labels[i]


class PairIdsCollate:
    """Pads ``input_ids`` (with ``pad_id``) and ``token_type_ids`` (with 0); adds ``attention_mask``."""

    def __init__(self, pad_id: int = 0) -> None:
        self.pad_id = pad_id

    def __call__(self, items: list) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        ids, mask = pad([x["input_ids"] for x, _ in items], self.pad_id)
        types, _ = pad([x["token_type_ids"] for x, _ in items], 0)
        return {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}, torch.stack([y for _, y in items])


def collate_pair_ids(items: list) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    return PairIdsCollate(0)(items)


def _load(
    spec: DatasetSpec,
    data_dir: str | os.PathLike | None,
    *,
    subset: Mapping[str, int] | None = None,
    model_path: str | os.PathLike | None = None,
    tokenizer: Any = None,
    max_length: int = 128,
) -> BenchmarkData:
    root = find_root(resolve_data_dir(data_dir, "pawsx", WHERE))
    missing = [
        str(root / f"{fs}-{lang}.tsv")
        for fs in FILE_SPLITS.values()
        for lang in LANGUAGES
        if not (root / f"{fs}-{lang}.tsv").is_file()
    ]
    if missing:
        raise MissingDataError(missing_files_message("pawsx", root, missing, WHERE))
    if tokenizer is None:
        if model_path is None:
            raise DatasetError(
                "pawsx: pass model_path, the local folder of a multilingual BERT (e.g. bert-base-multilingual-cased "
                "saved with save_pretrained); its tokenizer encodes the sentence pairs"
            )
        tokenizer = model_path
    tok = resolve_tokenizer(tokenizer)
    splits: dict[str, dict[str, Dataset]] = {s: {} for s in FILE_SPLITS}
    for s, fs in FILE_SPLITS.items():
        for lang in LANGUAGES:
            rows = read_tsv(root / f"{fs}-{lang}.tsv")
            rows = rows[: cap(len(rows), subset, s)]
            if not rows:
                raise CorruptDataError(f"{root / f'{fs}-{lang}.tsv'}: no sentence pair")
            enc = tokenize_pairs(tok, [r[0] for r in rows], [r[1] for r in rows], max_length)
            splits[s][lang] = PairIdsDataset(enc, [r[2] for r in rows])

    def metrics() -> dict:
        from benchmarks.metrics import Accuracy

        return {lang: Accuracy() for lang in LANGUAGES}

    return BenchmarkData(
        spec=spec,
        train=splits["train"],
        val=splits["val"],
        test=splits["test"],
        metric_factory=metrics,
        collate_fn=PairIdsCollate(int(getattr(tok, "pad_token_id", 0) or 0)),
        info={"root": str(root), "model_path": str(model_path) if model_path else None, "max_length": max_length},
    )


register(
    DatasetSpec(
        name="pawsx",
        title="PAWS-X (paraphrase identification in en, zh, de, es; multi-input)",
        tasks=tuple(
            TaskSpec(lang, "classification", "cross_entropy", 2, (metric(lang, "accuracy", True),))
            for lang in LANGUAGES
        ),
        multi_input=True,
        presets={
            "paper": Protocol(
                optimizer="adamw",
                lr=2e-5,
                optimizer_kwargs={"eps": 1e-8},
                batch_size=32,
                epochs=100,
                model="pawsx_bert",
                source="LibMTL xtreme example: bert-base-multilingual-cased pooled output, Dropout 0.1 + "
                "Linear(768, 2) per language, AdamW 2e-5 (eps 1e-8), batch 32, 100 epochs, max_seq_length 128",
            ),
            "quick": Protocol(
                optimizer="adamw",
                lr=2e-5,
                batch_size=16,
                epochs=1,
                model="pawsx_bert",
                subset={"train": 256, "val": 128, "test": 128},
                data_kwargs={"max_length": 64},
                source="mtlagg quick preset",
            ),
        },
        loader=_load,
        data_source=WHERE,
        expected_files=tuple(f"{s}-{{en,zh,de,es}}.tsv" for s in FILE_SPLITS.values()),
        validation="the official dev split (2,000 pairs per language)",
        aliases=("paws_x", "paws-x", "paws"),
    )
)
