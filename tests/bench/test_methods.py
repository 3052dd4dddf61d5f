"""Every method of ``mtlagg.aggregators.REGISTRY`` runs through ``mtlagg-bench run``, with its extra calls."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from benchmarks import methods, zoo
from benchmarks.runs import RunConfig
from benchmarks.trainer import Trainer, seed_everything

#: methods that cannot run without an argument, and the argument the test gives them
NEEDS = {
    "constant": {"weights": [1.0, 2.0, 1.0]},
    "krum": {"n_byzantine": 0},  # n_byzantine=1 needs at least 5 tasks; the synthetic data has 3
    "logloss": {"aggregator": "upgrad"},
}


def _trainer(tmp_path: Path, method: str, **kw) -> Trainer:
    options = {"epochs": 1, "max_steps": 2, **kw}
    config = RunConfig(dataset="synthetic", method=method, out=str(tmp_path), progress=False, **options)
    return Trainer(config, log=lambda message: None)


@pytest.mark.parametrize("name", methods.all_method_names())
def test_every_registered_method_runs_a_tiny_epoch(tmp_path: Path, name: str) -> None:
    trainer = _trainer(tmp_path, name, agg_args=NEEDS.get(name, {}))
    results = trainer.run()
    assert results is not None and results["skipped_steps"] == 0
    assert results["steps"] == (1 if trainer.driver.batches_per_step == 3 else 2)
    assert all(v == v for v in results["test"].values())
    # every shared parameter moved away from its initial value (the same seed rebuilds the initial model)
    seed_everything(0)
    initial = zoo.build(trainer.spec, "quick", "hps").model.state_dict()
    final = torch.load(trainer.run_dir / "checkpoint.pt", weights_only=False)["model"]
    for key, _ in trainer.model.named_shared_parameters():
        assert not torch.equal(initial[key], final[key]), key


def test_a_method_that_needs_an_argument_says_which(tmp_path: Path) -> None:
    with pytest.raises(methods.MethodError, match="Its parameters: weights"):
        _trainer(tmp_path, "constant").run()
    with pytest.raises(methods.MethodError, match="Its parameters: aggregator, eps"):
        _trainer(tmp_path, "logloss").run()


def test_a_method_that_cannot_run_on_the_dataset_says_why(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from benchmarks import cli

    argv = ["run", "--dataset", "synthetic", "--aggregator", "krum", "--epochs", "1", "--quiet", "--out", str(tmp_path)]
    assert cli.main(argv) == 1
    err = capsys.readouterr().err
    assert "Krum with n_byzantine=1 needs more than 2 * n_byzantine + 2 = 4 tasks, got 3" in err
    assert "Traceback" not in err


def test_crmogm_wraps_a_method_given_by_name(tmp_path: Path) -> None:
    trainer = _trainer(tmp_path, "crmogm", agg_args={"aggregator": "upgrad"})
    trainer.run()
    assert type(trainer.driver.aggregator.aggregator).__name__ == "UPGrad"


def test_famo_update_follows_every_step_and_is_not_a_training_loss(tmp_path: Path, monkeypatch) -> None:
    import json

    from mtlagg.aggregators import FAMO

    pre: list[list[float]] = []
    post: list[list[float]] = []
    compute, update = FAMO.compute_weights, FAMO.update

    def record_compute(self, inputs):
        pre.append(inputs.losses.tolist())
        return compute(self, inputs)

    def record_update(self, new_losses):
        assert not any(v.requires_grad for v in new_losses)  # recomputed under no_grad
        post.append([float(v) for v in new_losses])
        return update(self, new_losses)

    monkeypatch.setattr(FAMO, "compute_weights", record_compute)
    monkeypatch.setattr(FAMO, "update", record_update)
    results = _trainer(tmp_path, "famo", max_steps=3).run()
    assert results is not None and len(pre) == len(post) == 3
    logged = json.loads((Path(results["run_dir"]) / "log.jsonl").read_text().splitlines()[0])["train_loss"]
    expected = [sum(step[i] for step in pre) / 3 for i in range(3)]
    assert list(logged.values()) == pytest.approx(expected, rel=1e-6)  # the pre-step losses only
    assert post != pre


@pytest.mark.parametrize(("name", "hook"), [("dwa", "end_epoch"), ("stch", "end_epoch"), ("pivrg", "set_scores")])
def test_epoch_and_validation_hooks(tmp_path: Path, monkeypatch, name: str, hook: str) -> None:
    from mtlagg.aggregators import REGISTRY

    cls = REGISTRY[name]
    calls: list[tuple] = []
    original = getattr(cls, hook)

    def record(self, *args, **kwargs):
        calls.append(args)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(cls, hook, record)
    _trainer(tmp_path, name, epochs=3).run()
    assert len(calls) == 3  # once per epoch
    if hook == "set_scores":
        assert all(len(args[0]) == 3 for args in calls)
        assert calls[0][0] == [0.0, 0.0, 0.0]  # the first validation is its own reference


@pytest.mark.parametrize("name", ["sdmgrad", "modo"])
def test_multi_batch_methods_get_independent_batches(tmp_path: Path, monkeypatch, name: str) -> None:
    import mtlagg

    seen: list[int] = []
    original = mtlagg.multibatch_backward

    def record(losses_per_batch, *args, **kwargs):
        seen.append(len(losses_per_batch))
        return original(losses_per_batch, *args, **kwargs)

    monkeypatch.setattr(mtlagg, "multibatch_backward", record)
    _trainer(tmp_path, name, max_steps=None, data_args={"size": 96}).run()
    assert seen == [3, 3]  # 96 examples / 16 = 6 batches, 3 per step


def test_multi_batch_method_on_fewer_batches_than_a_step_needs(tmp_path: Path) -> None:
    results = _trainer(tmp_path, "sdmgrad", max_steps=None, data_args={"size": 20}).run()  # 2 batches of 16 + 4
    assert results is not None and results["steps"] == 1


@pytest.mark.parametrize("name", ["autolambda", "moml", "forum"])
def test_bilevel_outer_batches_come_from_validation(tmp_path: Path, monkeypatch, name: str) -> None:
    from mtlagg.aggregators import REGISTRY

    cls = REGISTRY[name]
    outer_rows: list[torch.Tensor] = []
    original = cls.step

    def step(self, model, loss_fn, batch, outer_batch=None, **kwargs):
        outer_rows.append(outer_batch[0])
        return original(self, model, loss_fn, batch, outer_batch, **kwargs)

    monkeypatch.setattr(cls, "step", step)
    trainer = _trainer(tmp_path, name)
    trainer.run()
    val = trainer.data.val.x
    train = trainer.data.train.x
    for rows in outer_rows:
        for row in rows:
            assert (val == row).all(dim=1).any() and not (train == row).all(dim=1).any()
    assert len(outer_rows) == 2


def test_consmtl_trains_the_heads_through_its_own_backward(tmp_path: Path) -> None:
    trainer = _trainer(tmp_path, "consmtl")
    results = trainer.run()
    assert results is not None and isinstance(trainer.driver, methods.ConsMTLDriver)
    seed_everything(0)
    initial = zoo.build(trainer.spec, "quick", "hps").model.state_dict()
    final = torch.load(trainer.run_dir / "checkpoint.pt", weights_only=False)["model"]
    for task in trainer.model.task_names:
        for key, _ in trainer.model.named_task_parameters(task):
            assert not torch.equal(initial[key], final[key]), key


def test_features_is_refused_for_methods_with_their_own_step(tmp_path: Path) -> None:
    with pytest.raises(methods.MethodError, match="has its own step"):
        _trainer(tmp_path, "sdmgrad", features=True).run()
