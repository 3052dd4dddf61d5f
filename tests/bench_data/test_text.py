"""SICK and PAWS-X on fixtures in their real formats, with a tiny tokenizer and a tiny BERT from config."""

from __future__ import annotations

import pytest
import torch

from benchmarks.datasets import CorruptDataError, DatasetError, MissingDataError, lookup
from benchmarks.datasets.sick import read_sick

pytest.importorskip("transformers")

SICK_HEADER = (
    "pair_ID\tsentence_A\tsentence_B\tentailment_label\trelatedness_score\tentailment_AB\tentailment_BA\t"
    "sentence_A_original\tsentence_B_original\tsentence_A_dataset\tsentence_B_dataset\tSemEval_set"
)
PAIRS = [
    ("A man is playing guitar", "Someone plays an instrument", "ENTAILMENT", 4.5, "TRAIN"),
    ("A dog is running in the park", "A cat is sitting on the street", "NEUTRAL", 2.1, "TRAIN"),
    ("Two people are riding horse", "Nobody is riding horse", "CONTRADICTION", 3.6, "TRAIN"),
    ("A girl is eating food", "A child is eating", "ENTAILMENT", 4.0, "TRAIN"),
    ("A boy is in the water", "A red ball is on the grass", "NEUTRAL", 1.2, "TRIAL"),
    ("A woman is playing", "A woman is not playing", "CONTRADICTION", 3.3, "TRIAL"),
    ("The black dog is running", "A dog is running", "ENTAILMENT", 4.7, "TEST"),
    ("A white cat", "The kids are sitting", "NEUTRAL", 1.0, "TEST"),
    ("A man is riding", "A man is not riding", "CONTRADICTION", 3.9, "TEST"),
]


def write_sick(path, pairs=PAIRS):
    rows = [SICK_HEADER]
    for i, (a, b, lab, score, split) in enumerate(pairs, start=1):
        rows.append(f"{i}\t{a}\t{b}\t{lab}\t{score}\tA_x_B\tB_x_A\t{a}\t{b}\tFLICKR\tFLICKR\t{split}")
    path.write_bytes(("\r\n".join(rows)).encode())  # CRLF and no final newline, like the real file
    return path


def test_sick_reader_splits_and_labels(tmp_path):
    rows = read_sick(write_sick(tmp_path / "SICK.txt"))
    assert {s: len(v) for s, v in rows.items()} == {"train": 4, "val": 2, "test": 3}
    assert rows["train"][0] == ("A man is playing guitar", "Someone plays an instrument", 4.5, 1)
    assert rows["test"][2][3] == 2 and rows["val"][0][3] == 0


def test_sick_loader_batches_and_tiny_model(tmp_path, tiny_tokenizer):
    write_sick(tmp_path / "SICK.txt")
    data = lookup("sick").load(tmp_path, preset="paper", tokenizer=tiny_tokenizer)
    inputs, y = data.train[0]
    assert (
        inputs["a"][0].item() == tiny_tokenizer.cls_token_id and inputs["a"][-1].item() == tiny_tokenizer.sep_token_id
    )
    x, y = data.collate_fn([data.train[i] for i in range(4)])
    assert next(iter(data.dataloaders(batch_size=4)["train"]))[0]["a_ids"].shape[0] == 4
    assert x["a_ids"].shape[0] == 4 and x["a_ids"].shape == x["a_mask"].shape
    assert (x["a_mask"].sum(1) == torch.tensor([len(data.train[i][0]["a"]) for i in range(4)])).all()
    assert y["relatedness"].dtype == torch.float32 and y["entailment"].tolist() == [1, 0, 2, 1]
    assert tiny_tokenizer.unk_token_id not in x["a_ids"][0].tolist()  # every word of pair 1 is in the vocabulary
    from benchmarks.models.sick import SentencePairNet, tiny_bert

    torch.manual_seed(0)
    net = SentencePairNet(tiny_bert(vocab_size=tiny_tokenizer.vocab_size))
    out = net(x)
    assert out["relatedness"].shape == (4,) and out["entailment"].shape == (4, 3)
    losses = data.losses()
    total = losses["relatedness"](out["relatedness"], y["relatedness"]) + losses["entailment"](
        out["entailment"], y["entailment"]
    )
    total.backward()
    assert all(p.grad is not None for p in net.heads.parameters())
    metrics = data.make_metrics()
    metrics["relatedness"].update(out["relatedness"].detach(), y["relatedness"])
    metrics["entailment"].update(out["entailment"].detach(), y["entailment"])
    assert set(metrics["relatedness"].compute()) == {"pearson", "spearman"}


def test_sick_errors(tmp_path, tiny_tokenizer):
    with pytest.raises(MissingDataError, match=r"(?s)SICK\.txt.*SemEval"):
        lookup("sick").load(tmp_path, tokenizer=tiny_tokenizer)
    path = write_sick(tmp_path / "SICK.txt")
    text = path.read_text()
    path.write_text(text[: len(text) - 60])  # the last row loses its last columns
    with pytest.raises(CorruptDataError, match=r"line 10: .* columns instead of 12"):
        read_sick(path)
    path.write_text("pair_ID\tsentence_A\n1\tx\n")
    with pytest.raises(CorruptDataError, match="not a SICK file"):
        read_sick(path)


@pytest.mark.realdata
def test_real_sick_file(data_dir):
    rows = read_sick(data_dir / "SICK.txt")
    assert {s: len(v) for s, v in rows.items()} == {"train": 4439, "val": 495, "test": 4906}
    labels = [r[3] for v in rows.values() for r in v]
    assert [labels.count(k) for k in range(3)] == [5595, 2821, 1424]
    scores = [r[2] for v in rows.values() for r in v]
    assert min(scores) >= 1.0 and max(scores) <= 5.0


@pytest.mark.realdata
@pytest.mark.slow
def test_real_sick_minilm_zero_shot_similarity_tracks_relatedness(data_dir):
    """The packaged MiniLM, through our tokenisation and pooling, correlates with SICK relatedness."""
    from benchmarks.datasets._text import minilm_path
    from benchmarks.models.sick import SentencePairNet, load_minilm

    try:
        minilm_path()
    except MissingDataError as exc:
        pytest.skip(str(exc))
    data = lookup("sick").load(data_dir, subset={"train": 10, "val": 495, "test": 10})
    net = SentencePairNet(load_minilm()).eval()
    metrics = data.make_metrics()
    with torch.no_grad():
        for x, y in data.dataloaders(batch_size=64)["val"]:
            u = net.encoder.embed(x["a_ids"], x["a_mask"])
            v = net.encoder.embed(x["b_ids"], x["b_mask"])
            metrics["relatedness"].update(torch.cosine_similarity(u, v), y["relatedness"])
    assert metrics["relatedness"].compute()["pearson"] > 0.75


def write_pawsx(root, header_lang="de"):
    root.mkdir(parents=True, exist_ok=True)
    pairs = [("a man is playing", "someone plays guitar", 1), ("the dog", "a cat", 0), ("two kids", "two kids", 1)]
    for split in ("train", "dev", "test"):
        for lang in ("en", "zh", "de", "es"):
            lines = [f"{a}\t{b}\t{y}" for a, b, y in pairs]
            if lang == header_lang:
                lines = ["id\tsentence1\tsentence2\tlabel"] + [f"{k}\t{ln}" for k, ln in enumerate(lines, 1)]
            (root / f"{split}-{lang}.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return root


def test_pawsx_loader_multi_input_and_model(tmp_path, tiny_tokenizer):
    write_pawsx(tmp_path / "pawsx")
    data = lookup("paws-x").load(tmp_path, preset="paper", tokenizer=tiny_tokenizer)
    assert data.sizes()["val"] == dict.fromkeys(("en", "zh", "de", "es"), 3)
    inputs, label = data.train["de"][0]  # the file with a header row
    assert label.item() == 1
    sep = (inputs["input_ids"] == tiny_tokenizer.sep_token_id).nonzero().flatten()
    assert len(sep) == 2 and (inputs["token_type_ids"][sep[0] + 1 :] == 1).all()
    loaders = data.dataloaders(batch_size=3)
    x, y = next(iter(loaders["test"]["zh"]))
    assert set(x) == {"input_ids", "attention_mask", "token_type_ids"} and y.tolist() == [1, 0, 1]
    from benchmarks.models.sick import PairClassifier, tiny_bert

    net = PairClassifier(tiny_bert(vocab_size=tiny_tokenizer.vocab_size))
    assert net(x, "zh").shape == (3, 2)


def test_pawsx_errors(tmp_path, tiny_tokenizer):
    with pytest.raises(MissingDataError, match=r"(?s)train-en\.tsv.*xtreme"):
        lookup("pawsx").load(tmp_path, tokenizer=tiny_tokenizer)
    root = write_pawsx(tmp_path / "pawsx")
    with pytest.raises(DatasetError, match="pass model_path"):
        lookup("pawsx").load(tmp_path)
    (root / "dev-es.tsv").unlink()
    with pytest.raises(MissingDataError, match=r"dev-es\.tsv"):
        lookup("pawsx").load(tmp_path, tokenizer=tiny_tokenizer)
    (root / "dev-es.tsv").write_text("only one column\n")
    with pytest.raises(CorruptDataError, match=r"dev-es\.tsv, line 1"):
        lookup("pawsx").load(tmp_path, tokenizer=tiny_tokenizer)
