"""``mtlagg-bench run``: files of a run, architectures, weighted / loss-only methods, the features path, resume."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

from benchmarks import cli
from benchmarks.runs import RunConfig
from benchmarks.trainer import StopRun, Trainer, selection_score, task_scores
from mtlagg.errors import NonFiniteError


def _run(tmp_path: Path, *extra: str, dataset: str = "synthetic") -> int:
    return cli.main(["run", "--dataset", dataset, "--out", str(tmp_path), "--quiet", *extra])


def _results(folder: Path) -> dict:
    return json.loads((folder / "results.json").read_text())


def test_run_writes_config_log_results_and_checkpoint(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert _run(tmp_path, "--aggregator", "upgrad", "--epochs", "3") == 0
    folder = tmp_path / "synthetic" / "quick" / "hps" / "upgrad" / "seed0"
    assert {p.name for p in folder.iterdir()} == {"config.json", "log.jsonl", "results.json", "checkpoint.pt"}
    config = json.loads((folder / "config.json").read_text())
    assert config["method"] == "upgrad" and config["epochs"] == 3 and config["lr"] == 1e-2  # preset value filled in
    lines = [json.loads(line) for line in (folder / "log.jsonl").read_text().splitlines()]
    assert [line["epoch"] for line in lines] == [1, 2, 3]
    assert set(lines[0]["val"]) == {"reg_a/mae", "reg_b/mae", "cls/accuracy"}
    results = _results(folder)
    # the reported test metrics are those of the epoch selected on validation, by the documented criterion
    reference = lines[0]["val"]
    higher = {"reg_a/mae": False, "reg_b/mae": False, "cls/accuracy": True}
    scores = [selection_score(line["val"], reference, higher) for line in lines]
    best = min(range(3), key=lambda i: (scores[i], i))
    assert results["selected_epoch"] == best + 1
    assert results["test"] == lines[best]["test"] and results["val"] == lines[best]["val"]
    assert lines[-1]["train_loss"]["reg_a"] < lines[0]["train_loss"]["reg_a"]  # it learns
    assert "test metrics at epoch" in capsys.readouterr().out


def test_selection_score_is_delta_m_against_the_reference() -> None:
    higher = {"a/acc": True, "b/mae": False}
    ref = {"a/acc": 0.5, "b/mae": 2.0}
    # a: -(0.6 - 0.5) / 0.5 = -20 %, b: (1.0 - 2.0) / 2.0 = -50 %; mean -35
    assert selection_score({"a/acc": 0.6, "b/mae": 1.0}, ref, higher) == pytest.approx(-35.0)
    assert task_scores({"a/acc": 0.6, "b/mae": 1.0}, ref, higher, ["a", "b"]) == pytest.approx([-20.0, -50.0])
    assert selection_score({"a/acc": float("nan"), "b/mae": 1.0}, ref, higher) == float("inf")
    # a zero reference is left out instead of dividing by it
    assert selection_score({"a/acc": 0.6, "b/mae": 1.0}, {"a/acc": 0.0, "b/mae": 2.0}, higher) == pytest.approx(-50.0)


@pytest.mark.parametrize("method", ["mean", "mgda", "pcgrad"])
def test_loss_only_and_gradient_methods_train(tmp_path: Path, method: str) -> None:
    assert _run(tmp_path, "--aggregator", method, "--epochs", "1") == 0
    results = _results(tmp_path / "synthetic" / "quick" / "hps" / method / "seed0")
    assert results["steps"] == 4 and results["skipped_steps"] == 0
    assert all(v == v for v in results["test"].values())


def test_agg_args_reach_the_method_and_name_the_folder(tmp_path: Path) -> None:
    assert _run(tmp_path, "--aggregator", "cagrad", "--agg-arg", "c=0.9", "--epochs", "1") == 0
    folder = tmp_path / "synthetic" / "quick" / "hps" / "cagrad_c=0.9" / "seed0"
    assert json.loads((folder / "config.json").read_text())["agg_args"] == {"c": 0.9}


def test_bad_agg_arg_names_the_parameters(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert _run(tmp_path, "--aggregator", "cagrad", "--agg-arg", "cc=0.9", "--epochs", "1") == 2
    err = capsys.readouterr().err
    assert "CAGrad(cc=0.9)" in err and "Its parameters: c=" in err


def test_features_path_changes_the_direction_only_where_it_should(tmp_path: Path) -> None:
    # Mean on the representation is the exact mean (linear); UPGrad on the representation is another method.
    common = ["--epochs", "1", "--max-steps", "3"]
    for method in ("mean", "upgrad"):
        assert _run(tmp_path, "--aggregator", method, *common) == 0
        assert _run(tmp_path, "--aggregator", method, "--features", *common) == 0
    base = tmp_path / "synthetic" / "quick" / "hps"
    exact, shortcut = _results(base / "mean" / "seed0"), _results(base / "mean+features" / "seed0")
    for key in exact["test"]:
        assert shortcut["test"][key] == pytest.approx(exact["test"][key], rel=1e-4, abs=1e-6)
    exact, shortcut = _results(base / "upgrad" / "seed0"), _results(base / "upgrad+features" / "seed0")
    assert exact["test"] != shortcut["test"]
    assert shortcut["features"] is True


@pytest.mark.parametrize("arch", ["mmoe", "cross_stitch", "ltb"])
def test_other_architectures(tmp_path: Path, arch: str) -> None:
    assert _run(tmp_path, "--aggregator", "upgrad", "--arch", arch, "--epochs", "1", "--max-steps", "2") == 0
    results = _results(tmp_path / "synthetic" / "quick" / arch / "upgrad" / "seed0")
    assert results["arch"] == arch


def test_lenet_mtan_on_the_multimnist_format(tmp_path: Path, fake_mnist: Path) -> None:
    args = ["--aggregator", "upgrad", "--arch", "mtan", "--epochs", "1", "--max-steps", "2", "--batch-size", "32"]
    args += ["--data-dir", str(fake_mnist), "--data-arg", "val_size=50"]
    assert _run(tmp_path, *args, dataset="multimnist") == 0
    results = _results(tmp_path / "multimnist" / "quick" / "mtan" / "upgrad" / "seed0")
    assert set(results["test"]) == {"left/accuracy", "right/accuracy"}


def test_multi_input_dataset(tmp_path: Path) -> None:
    assert _run(tmp_path, "--aggregator", "upgrad", "--epochs", "4", dataset="synthetic_multi") == 0
    results = _results(tmp_path / "synthetic_multi" / "quick" / "hps" / "upgrad" / "seed0")
    assert results["steps"] == 4 * 11  # the longest task loader (164 examples / 16) sets the epoch length
    assert results["test"]["first/accuracy"] > 0.75 and results["test"]["second/accuracy"] > 0.75


def _strip_times(text: str) -> str:
    return re.sub(r'"(train|eval)_time_s": [0-9.e-]+', "", text)


@pytest.mark.parametrize("method", ["random", "upgrad", "famo", "dwa", "pivrg", "sdmgrad", "autolambda", "gradvac"])
def test_resume_ends_with_exactly_the_numbers_of_an_uninterrupted_run(tmp_path: Path, method: str) -> None:
    # the paper preset of the fixture has SGD momentum, a MultiStep schedule and dropout: every piece of state
    common = ["--preset", "paper", "--aggregator", method, "--epochs", "4", "--quiet", "--dataset", "synthetic"]
    assert cli.main(["run", *common, "--out", str(tmp_path / "a")]) == 0
    assert cli.main(["run", *common, "--out", str(tmp_path / "b"), "--stop-after-epoch", "2"]) == 0
    folder_b = tmp_path / "b" / "synthetic" / "paper" / "hps" / method / "seed0"
    assert not (folder_b / "results.json").exists()
    assert len((folder_b / "log.jsonl").read_text().splitlines()) == 2
    assert cli.main(["run", *common, "--out", str(tmp_path / "b")]) == 0
    folder_a = tmp_path / "a" / "synthetic" / "paper" / "hps" / method / "seed0"
    log_a, log_b = (f / "log.jsonl" for f in (folder_a, folder_b))
    assert _strip_times(log_a.read_text()) == _strip_times(log_b.read_text())
    results_a, results_b = _results(folder_a), _results(folder_b)
    for key in ("test", "val", "selected_epoch", "steps"):
        assert results_a[key] == results_b[key]
    model_a = torch.load(folder_a / "checkpoint.pt", weights_only=False)["model"]
    model_b = torch.load(folder_b / "checkpoint.pt", weights_only=False)["model"]
    assert all(torch.equal(model_a[k], model_b[k]) for k in model_a)


def test_resume_after_an_epoch_logged_but_not_checkpointed(tmp_path: Path) -> None:
    config = RunConfig(dataset="synthetic", method="mean", epochs=3, out=str(tmp_path), progress=False)
    with pytest.raises(StopRun):
        Trainer(config, stop_after_epoch=1).run()
    folder = config.resolved().run_dir()
    with (folder / "log.jsonl").open("a") as f:  # a crash between the log line and the checkpoint
        f.write('{"epoch": 2, "partial": true}\n')
    results = Trainer(config).run()
    assert results is not None and results["steps"] == 3 * 4
    epochs = [json.loads(line)["epoch"] for line in (folder / "log.jsonl").read_text().splitlines()]
    assert epochs == [1, 2, 3]


def test_rerunning_a_finished_run_returns_its_results(tmp_path: Path) -> None:
    config = RunConfig(dataset="synthetic", method="mean", epochs=1, out=str(tmp_path), progress=False)
    first = Trainer(config).run()
    assert Trainer(config).run() == first


def test_a_different_config_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert _run(tmp_path, "--epochs", "2", "--stop-after-epoch", "1") == 0
    capsys.readouterr()
    assert _run(tmp_path, "--epochs", "2", "--lr", "0.5") == 1
    err = capsys.readouterr().err
    assert "another configuration" in err and "lr: stored 0.01, now 0.5" in err and "Traceback" not in err


def test_non_finite_losses_raise_by_default_and_can_be_skipped(tmp_path: Path) -> None:
    poisoned = {"nan_at": 5}
    config = RunConfig(dataset="synthetic", method="upgrad", epochs=1, data_args=poisoned, out=str(tmp_path))
    config.progress = False
    with pytest.raises(NonFiniteError, match="task 0: loss is nan"):
        Trainer(config).run()
    skipping = RunConfig(
        dataset="synthetic", method="upgrad", epochs=2, data_args=poisoned, on_nonfinite="skip", out=str(tmp_path / "s")
    )
    skipping.progress = False
    with pytest.warns(RuntimeWarning, match="skipped the step: task 0: loss is nan"):
        results = Trainer(skipping).run()
    assert results is not None and results["skipped_steps"] == 2  # one poisoned batch per epoch
    assert all(v == v for v in results["test"].values())


def test_nyuv2_format_with_the_default_segnet_mtan(tmp_path: Path) -> None:
    from tests.bench_data.test_dense import write_dense

    write_dense(tmp_path / "data" / "nyuv2", "nyuv2", n_train=6, n_test=2, shape=(64, 64))
    args = ["--data-dir", str(tmp_path / "data"), "--aggregator", "mean", "--epochs", "1", "--max-steps", "2"]
    args += ["--batch-size", "2", "--model-arg", "filters=4,4,4,4,4", "--data-arg", "size=[32, 32]"]
    assert _run(tmp_path, *args, dataset="nyuv2") == 0
    results = _results(tmp_path / "nyuv2" / "quick" / "mtan" / "mean" / "seed0")  # MTAN: the papers' model
    assert len(results["test"]) == 9 and results["arch"] == "mtan"


def test_celeba_format_forty_tasks_with_safe_head_names(tmp_path: Path) -> None:
    pytest.importorskip("PIL.Image")
    from tests.bench_data.test_images import write_celeba

    write_celeba(tmp_path / "data" / "celeba", n=12)
    args = ["--data-dir", str(tmp_path / "data"), "--aggregator", "upgrad", "--features", "--epochs", "2"]
    args += ["--batch-size", "3", "--model-arg", "width=0.05", "--data-arg", "size=[16, 16]"]  # 9 = 3 x 3 images
    assert _run(tmp_path, *args, dataset="celeba") == 0
    results = _results(tmp_path / "celeba" / "quick" / "hps" / "upgrad+features" / "seed0")
    assert len(results["test"]) == 40 and "5_o_Clock_Shadow/f1" in results["test"]


def test_office31_format_multi_input_resnet(tmp_path: Path) -> None:
    pytest.importorskip("PIL.Image")
    from tests.bench_data.test_images import write_office31

    write_office31(tmp_path / "data" / "office31")
    args = ["--data-dir", str(tmp_path / "data"), "--aggregator", "mgda", "--arch", "cross_stitch", "--epochs", "1"]
    args += [
        "--batch-size",
        "4",
        "--model-arg",
        "width=4",
        "--model-arg",
        "feature_dim=8",
        "--data-arg",
        "size=[32, 32]",
    ]
    assert _run(tmp_path, *args, dataset="office31") == 0
    results = _results(tmp_path / "office31" / "quick" / "cross_stitch" / "mgda" / "seed0")
    assert set(results["test"]) == {"amazon/accuracy", "dslr/accuracy", "webcam/accuracy"}


def test_pawsx_format_with_a_local_bert_folder(tmp_path: Path) -> None:
    transformers = pytest.importorskip("transformers")
    import inspect

    from benchmarks.models.sick import tiny_bert
    from tests.bench_data.conftest import WORDS
    from tests.bench_data.test_text import write_pawsx

    write_pawsx(tmp_path / "data" / "pawsx")
    vocab = list(dict.fromkeys(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ".", ",", *WORDS]))
    model_dir = tmp_path / "bert"
    if "vocab" in inspect.signature(transformers.BertTokenizer.__init__).parameters:  # transformers >= 5
        tokenizer = transformers.BertTokenizer(vocab={w: i for i, w in enumerate(vocab)}, do_lower_case=True)
    else:
        (tmp_path / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
        tokenizer = transformers.BertTokenizerFast(vocab_file=str(tmp_path / "vocab.txt"), do_lower_case=True)
    tokenizer.save_pretrained(model_dir)
    tiny_bert(vocab_size=len(vocab), hidden=8, layers=1).save_pretrained(model_dir)
    args = ["--data-dir", str(tmp_path / "data"), "--aggregator", "upgrad", "--epochs", "1", "--batch-size", "2"]
    args += ["--data-arg", f"model_path={model_dir}"]
    assert _run(tmp_path, *args, dataset="pawsx") == 0
    results = _results(tmp_path / "pawsx" / "quick" / "hps" / "upgrad" / "seed0")
    assert set(results["test"]) == {f"{lang}/accuracy" for lang in ("en", "zh", "de", "es")}
    assert results["steps"] == 2  # 3 pairs per language, batch 2
