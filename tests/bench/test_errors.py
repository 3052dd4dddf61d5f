"""Bad input reaches the user as one clear message (no traceback): names, data folders, arguments."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks import cli, zoo
from benchmarks.datasets import lookup
from benchmarks.runs import BadArgument, parse_assignments, parse_value


def _main(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    code = cli.main(list(argv))
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return code, err


@pytest.mark.parametrize(
    ("flag", "value", "expected"),
    [
        ("--dataset", "multimnst", "Did you mean 'multimnist'"),
        ("--aggregator", "upgrd", "did you mean upgrad"),
        ("--arch", "mmeo", "did you mean mmoe"),
    ],
)
def test_unknown_names_exit_2_with_the_closest_names(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], flag: str, value: str, expected: str
) -> None:
    argv = {"--dataset": "synthetic", "--aggregator": "mean", "--arch": "hps", flag: value}
    args = [x for pair in argv.items() for x in pair]
    code, err = _main(capsys, "run", *args, "--out", str(tmp_path), "--quiet")
    assert code == 2 and expected in err


def test_compare_and_stl_check_names_too(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, err = _main(
        capsys, "compare", "--dataset", "synthetic", "--aggregators", "mean,pcgard", "--out", str(tmp_path)
    )
    assert code == 2 and "did you mean pcgrad" in err
    code, err = _main(capsys, "stl", "--dataset", "qm8", "--out", str(tmp_path))
    assert code == 2 and "Did you mean 'qm9'" in err
    code, err = _main(
        capsys, "compare", "--dataset", "synthetic", "--aggregators", "mean", "--seeds", "0,x", "--out", "x"
    )
    assert code == 2 and "--seeds expects integers" in err


def test_a_data_folder_without_the_files_says_which_and_where_to_get_them(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    code, err = _main(capsys, "run", "--dataset", "multimnist", "--data-dir", str(empty), "--out", str(tmp_path))
    assert code == 1
    assert "mnist.npz" in err and str(empty) in err and "Where to get them" in err and "yann.lecun.com" in err


def test_a_truncated_file_is_named(tmp_path: Path, capsys: pytest.CaptureFixture[str], fake_mnist: Path) -> None:
    data = (fake_mnist / "mnist.npz").read_bytes()
    (fake_mnist / "mnist.npz").write_bytes(data[: len(data) // 2])
    code, err = _main(capsys, "run", "--dataset", "multimnist", "--data-dir", str(fake_mnist), "--out", str(tmp_path))
    assert code == 1 and "mnist.npz" in err


def test_unknown_loader_option(tmp_path: Path, capsys: pytest.CaptureFixture[str], fake_mnist: Path) -> None:
    code, err = _main(
        capsys, "run", "--dataset", "multimnist", "--data-dir", str(fake_mnist), "--data-arg", "vals=3", "--out", "x"
    )
    assert code == 1 and "unknown --data-arg ['vals']" in err and "val_size" in err


def test_unknown_model_option(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, err = _main(capsys, "run", "--dataset", "synthetic", "--model-arg", "widht=3", "--out", str(tmp_path))
    assert code == 2 and "unknown option(s) ['widht']" in err and "hidden" in err


def test_staged_architectures_refuse_non_staged_encoders() -> None:
    spec = lookup("qm9")
    with pytest.raises(zoo.ModelError, match=r"'ple' needs a backbone split into stages.*hps, mmoe, cgc, dselect_k"):
        zoo.build(spec, "quick", "ple")
    with pytest.raises(zoo.ModelError, match="'mtan' needs a backbone split into stages"):
        zoo.build(spec, "quick", "mtan")
    built = zoo.build(spec, "quick", "mmoe")  # an expert-based one works
    assert built.arch == "mmoe" and len(built.model.task_names) == 11


def test_task_names_that_are_not_identifiers_get_safe_heads() -> None:
    built = zoo.build(lookup("celeba"), "quick")
    assert built.head_of["5_o_Clock_Shadow"] == "t_5_o_Clock_Shadow"
    assert built.task_of["t_5_o_Clock_Shadow"] == "5_o_Clock_Shadow"


def test_office_paper_model_needs_weights() -> None:
    with pytest.raises(zoo.ModelError, match="weights_path=FILE"):
        zoo.build(lookup("office31"), "paper")


def test_office_quick_model_on_every_architecture() -> None:
    import torch

    spec = lookup("office31")
    for arch in ("hps", "cross_stitch", "mmoe"):
        built = zoo.build(spec, "quick", arch, model_kwargs={"width": 8, "feature_dim": 16})
        built.model.eval()
        out = built.model(torch.rand(2, 3, 32, 32), task="amazon")
        assert out["amazon"].shape == (2, 31)


def test_parse_values() -> None:
    assert parse_value("3") == 3 and parse_value("0.5") == 0.5 and parse_value("1e-3") == 1e-3
    assert parse_value("True") is True and parse_value("off") is False and parse_value("none") is None
    assert parse_value("1,2,3") == [1, 2, 3] and parse_value("[0.1, 0.9]") == [0.1, 0.9]
    assert parse_value("sgd") == "sgd" and parse_value("a,b") == ["a", "b"]
    assert parse_assignments(["c=0.4", "rescale=1"], "--agg-arg") == {"c": 0.4, "rescale": 1}
    with pytest.raises(BadArgument, match="--agg-arg expects name=value"):
        parse_assignments(["c0.4"], "--agg-arg")


def test_bad_numbers_are_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, err = _main(capsys, "run", "--dataset", "synthetic", "--epochs", "0", "--out", str(tmp_path))
    assert code == 2 and "epochs must be >= 1" in err
