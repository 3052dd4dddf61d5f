"""Value tests of the loss-weighting methods against hand computations and TorchJD's scalarizers."""

from __future__ import annotations

import math

import pytest
import torch
from torchjd import scalarization as tjs

from mtlagg.aggregators import DWA, FAMO, GLS, IMTL, IMTLL, STCH, UW, GO4Align
from mtlagg.aggregators.go4align import kmeans_1d
from mtlagg.aggregators.imtl import imtl_g_weights

LOSS_SEQUENCE = [
    torch.tensor([0.9, 2.5, 0.3], dtype=torch.float64),
    torch.tensor([0.7, 2.0, 0.35], dtype=torch.float64),
    torch.tensor([0.6, 1.2, 0.2], dtype=torch.float64),
]


def scalarizer_weights(scalarizer, losses: torch.Tensor) -> torch.Tensor:
    """The effective weights of a TorchJD scalarizer: the gradient of its output w.r.t. the losses."""
    values = losses.clone().requires_grad_()
    (gradient,) = torch.autograd.grad(scalarizer(values), values)
    return gradient


class TestUW:
    def test_weights_follow_adam_on_the_uncertainty_objective(self):
        uw = UW(weight_lr=0.1)
        s = torch.zeros(3, dtype=torch.float64, requires_grad=True)
        reference = torch.optim.Adam([s], lr=0.1)
        for losses in LOSS_SEQUENCE:
            expected = 0.5 * torch.exp(-s.detach())
            torch.testing.assert_close(uw.weights(losses=losses), expected)
            reference.zero_grad()
            (0.5 * (torch.exp(-s) * losses + s)).sum().backward()
            reference.step()
        torch.testing.assert_close(uw.log_var, s.detach())

    def test_sgd_by_hand(self):
        uw = UW(weight_lr=0.5, weight_optimizer="sgd")
        w1 = uw.weights(losses=LOSS_SEQUENCE[0])
        torch.testing.assert_close(w1, torch.full((3,), 0.5, dtype=torch.float64))
        # s1 = 0 - 0.5 * 0.5 * (1 - L0)
        s1 = -0.25 * (1 - LOSS_SEQUENCE[0])
        torch.testing.assert_close(uw.weights(losses=LOSS_SEQUENCE[1]), 0.5 * torch.exp(-s1))

    def test_matches_torchjd_weights_at_the_same_log_variances(self):
        uw = UW(weight_lr=0.1)
        for losses in LOSS_SEQUENCE:
            scalarizer = tjs.UW(3).double()
            log_var = uw.log_var if uw.log_var is not None else torch.zeros(3, dtype=torch.float64)
            with torch.no_grad():
                scalarizer.log_var.copy_(log_var)
            torch.testing.assert_close(uw.weights(losses=losses), scalarizer_weights(scalarizer, losses))

    def test_fixed_point_is_the_loss(self):
        uw = UW(weight_lr=0.05)
        losses = torch.tensor([0.2, 4.0], dtype=torch.float64)
        for _ in range(600):
            uw.weights(losses=losses)
        torch.testing.assert_close(torch.exp(uw.log_var), losses, rtol=2e-2, atol=0)


class TestIMTLL:
    def test_weights_and_scales_against_autograd(self):
        imtl = IMTLL(weight_lr=0.2, weight_optimizer="sgd")
        s = torch.zeros(3, dtype=torch.float64, requires_grad=True)
        for losses in LOSS_SEQUENCE:
            scalarizer = tjs.IMTLL(3).double()
            with torch.no_grad():
                scalarizer.log_scale.copy_(s)
            torch.testing.assert_close(imtl.weights(losses=losses), scalarizer_weights(scalarizer, losses))
            (gradient,) = torch.autograd.grad((torch.exp(s) * losses - s).sum(), s)
            s = (s - 0.2 * gradient).detach().requires_grad_()
        torch.testing.assert_close(imtl.log_scale, s.detach())


def libmtl_imtl_g(grads: torch.Tensor) -> torch.Tensor:
    """IMTL-G as written in the paper / LibMTL, on explicit gradient vectors."""
    units = grads / grads.norm(dim=1, keepdim=True)
    D = grads[:1] - grads[1:]
    U = units[:1] - units[1:]
    alpha_rest = grads[0] @ U.T @ torch.linalg.inv(D @ U.T)
    return torch.cat([1 - alpha_rest.sum(dim=0, keepdim=True), alpha_rest])


class TestIMTL:
    def test_imtl_g_matches_the_paper_closed_form(self):
        generator = torch.Generator().manual_seed(1)
        for T in (2, 3, 5):
            grads = torch.randn(T, 12, generator=generator, dtype=torch.float64)
            torch.testing.assert_close(imtl_g_weights(grads @ grads.T), libmtl_imtl_g(grads))

    def test_equal_projections(self):
        grads = torch.randn(4, 9, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
        alpha = imtl_g_weights(grads @ grads.T)
        d = alpha @ grads
        projections = grads @ d / grads.norm(dim=1)
        torch.testing.assert_close(projections, projections.mean().expand(4))
        assert float(alpha.sum()) == pytest.approx(1.0)

    def test_hybrid_uses_the_scaled_gradients(self):
        grads = torch.randn(3, 7, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
        imtl = IMTL(weight_lr=0.3, weight_optimizer="sgd")
        s = torch.zeros(3, dtype=torch.float64)
        for losses in LOSS_SEQUENCE:
            scaled = torch.exp(s)[:, None] * grads
            expected = libmtl_imtl_g(scaled) * torch.exp(s)
            torch.testing.assert_close(imtl.weights(grads @ grads.T, losses=losses), expected)
            s = s - 0.3 * (torch.exp(s) * losses - 1)

    def test_zero_gradient_gets_no_weight(self):
        grads = torch.randn(3, 5, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
        grads[1] = 0
        alpha = imtl_g_weights(grads @ grads.T)
        assert alpha[1] == 0
        torch.testing.assert_close(alpha[[0, 2]], libmtl_imtl_g(grads[[0, 2]]))


class TestDWA:
    def test_per_epoch_matches_the_paper_and_torchjd(self):
        dwa = DWA()
        reference = tjs.DWA(temperature=2.0)
        epochs = [LOSS_SEQUENCE[:2], LOSS_SEQUENCE[1:], LOSS_SEQUENCE, LOSS_SEQUENCE[:1]]
        means = []
        for epoch, batches in enumerate(epochs):
            for losses in batches:
                weights = dwa.weights(losses=losses)
                torch.testing.assert_close(weights, scalarizer_weights(reference, losses))
                if epoch < 2:
                    torch.testing.assert_close(weights, torch.ones(3, dtype=torch.float64))
                else:
                    r = means[-1] / means[-2]
                    torch.testing.assert_close(weights, 3 * torch.softmax(r / 2, dim=0))
            means.append(torch.stack(batches).mean(0))
            dwa.end_epoch()
            reference.step()
        assert dwa.epoch == 4

    def test_explicit_epoch_means(self):
        dwa = DWA(temperature=1.0)
        dwa.end_epoch(torch.tensor([1.0, 1.0]))
        dwa.end_epoch(torch.tensor([0.5, 1.0]))
        weights = dwa.weights(losses=torch.tensor([1.0, 1.0]))
        torch.testing.assert_close(weights, 2 * torch.softmax(torch.tensor([0.5, 1.0]), dim=0))

    def test_per_iteration_window(self):
        dwa = DWA(window=2)
        history = [
            torch.tensor([4.0, 1.0]),
            torch.tensor([2.0, 1.0]),
            torch.tensor([2.0, 1.0]),
            torch.tensor([1.0, 1.0]),
        ]
        for losses in history:
            torch.testing.assert_close(dwa.weights(losses=losses), torch.ones(2))
        r = torch.tensor([1.5 / 3.0, 1.0])
        torch.testing.assert_close(dwa.weights(losses=torch.tensor([1.0, 1.0])), 2 * torch.softmax(r / 2, dim=0))
        # the window slides: now steps 2-3 against steps 4-5
        r = torch.tensor([1.0 / 2.0, 1.0])
        torch.testing.assert_close(dwa.weights(losses=torch.tensor([1.0, 1.0])), 2 * torch.softmax(r / 2, dim=0))


class TestGLS:
    def test_weights_are_the_gradient_of_the_geometric_mean(self):
        for losses in LOSS_SEQUENCE:
            values = losses.clone().requires_grad_()
            (gradient,) = torch.autograd.grad(torch.exp(torch.log(values).mean()), values)
            torch.testing.assert_close(GLS().weights(losses=losses), gradient)
            torch.testing.assert_close(GLS().weights(losses=losses), scalarizer_weights(tjs.GeometricMean(), losses))

    def test_rejects_non_positive_losses(self):
        with pytest.raises(ValueError, match=r"needs them positive; tasks \[1\]"):
            GLS().weights(losses=torch.tensor([1.0, 0.0]))


class TestFAMO:
    def test_matches_torchjd_over_three_steps(self):
        famo = FAMO(weight_lr=0.025, weight_decay=1e-3)
        reference = tjs.FAMO(3, lr=0.025, weight_decay=1e-3).double()
        after = [torch.tensor([0.8, 2.4, 0.25]), torch.tensor([0.5, 1.9, 0.33]), torch.tensor([0.59, 1.0, 0.1])]
        for losses, new in zip(LOSS_SEQUENCE, after):
            new = new.double()
            torch.testing.assert_close(famo.weights(losses=losses), scalarizer_weights(reference, losses))
            famo.update(new)
            reference.update(new)
            torch.testing.assert_close(famo.logits, reference._w.detach(), rtol=1e-10, atol=1e-12)

    def test_by_hand(self):
        famo = FAMO(weight_lr=0.1, weight_decay=0.0)
        losses = torch.tensor([1.0, 4.0], dtype=torch.float64)
        w = famo.weights(losses=losses)
        # z = 1/2: weights proportional to 1/L
        torch.testing.assert_close(w, torch.tensor([0.8, 0.2], dtype=torch.float64), rtol=1e-7, atol=0)
        famo.update(torch.tensor([0.5, 3.0], dtype=torch.float64))
        delta = torch.log(torch.tensor([1.0, 4.0]) / torch.tensor([0.5, 3.0])).double()
        gradient = 0.5 * (delta - 0.5 * delta.sum())
        # Adam's first step moves every coordinate by lr * sign(gradient)
        torch.testing.assert_close(famo.logits, -0.1 * torch.sign(gradient), rtol=1e-6, atol=0)
        assert famo.logits[1] > famo.logits[0]  # task 1 fell less: it gains weight


class TestSTCH:
    def test_warmup_then_smooth_tchebycheff(self):
        stch = STCH(mu=0.5, warmup_epochs=2)
        first = stch.weights(losses=LOSS_SEQUENCE[0])
        torch.testing.assert_close(first, 1 / (LOSS_SEQUENCE[0] + 1e-20))
        stch.end_epoch()
        for losses in LOSS_SEQUENCE[1:]:
            torch.testing.assert_close(stch.weights(losses=losses), 1 / losses)
        assert stch.warming_up
        stch.end_epoch()
        nadir = (LOSS_SEQUENCE[1] + LOSS_SEQUENCE[2]) / 2
        torch.testing.assert_close(stch.nadir_point(), nadir)
        losses = torch.tensor([0.5, 1.7, 0.3], dtype=torch.float64)
        values = losses.clone().requires_grad_()
        log_ratio = torch.log(values / nadir + 1e-20)
        objective = 3 * 0.5 * torch.logsumexp((log_ratio - log_ratio.max().detach()) / 0.5, dim=0)
        (expected,) = torch.autograd.grad(objective, values)
        torch.testing.assert_close(stch.weights(losses=losses), expected)

    def test_given_nadir(self):
        nadir = torch.tensor([1.0, 2.0], dtype=torch.float64)
        stch = STCH(mu=1.0, nadir=nadir, warmup_epochs=0)
        losses = torch.tensor([2.0, 2.0], dtype=torch.float64)
        ratios = losses / nadir
        expected = 2 * ratios / ratios.sum() / losses  # softmax of log-ratios with mu = 1
        torch.testing.assert_close(stch.weights(losses=losses), expected)


class TestGO4Align:
    def test_one_group_by_hand(self):
        go = GO4Align(num_groups=1, robust_step_size=0.5)
        probs = torch.full((3,), 1 / 3, dtype=torch.float64)
        for losses in LOSS_SEQUENCE:
            probs = probs * torch.exp(-0.5 * losses)
            probs = probs / probs.sum()
            gamma = losses.sum() / losses * probs
            torch.testing.assert_close(go.weights(losses=losses), gamma.mean().expand(3))

    def test_groups_take_their_mean(self):
        go = GO4Align(num_groups=2, robust_step_size=0.0)
        losses = torch.tensor([1.0, 1.1, 10.0, 0.1], dtype=torch.float64)
        gamma = losses.sum() / losses / 4  # 14.7, 13.4, 1.5, 147
        w = go.weights(losses=losses)
        expected = torch.tensor([0, 0, 0, 1]) * gamma[3] + torch.tensor([1, 1, 1, 0]) * gamma[:3].mean()
        torch.testing.assert_close(w, expected.double())

    def test_exact_kmeans_matches_sklearn(self):
        sklearn = pytest.importorskip("sklearn.cluster")
        generator = torch.Generator().manual_seed(5)
        for trial in range(20):
            n = 3 + trial % 8
            k = 1 + trial % min(n, 4)
            values = torch.rand(n, generator=generator, dtype=torch.float64) * 10
            ours = kmeans_1d(values, k)
            model = sklearn.KMeans(n_clusters=k, n_init=20, random_state=0).fit(values[:, None].numpy())

            def inertia(labels, values=values):
                return sum(
                    float(((values[labels == g] - values[labels == g].mean()) ** 2).sum()) for g in labels.unique()
                )

            assert inertia(ours) <= model.inertia_ + 1e-9
            assert len(ours.unique()) == k

    def test_too_many_groups(self):
        with pytest.raises(ValueError, match=r"GO4Align\(num_groups=5\) needs at least 5 tasks, got 3"):
            GO4Align(num_groups=5).weights(losses=LOSS_SEQUENCE[0])


def test_famo_weights_sum_to_one_and_favour_small_losses():
    w = FAMO().weights(losses=torch.tensor([0.1, 1.0, 10.0]))
    assert float(w.sum()) == pytest.approx(1.0)
    assert w[0] > w[1] > w[2]
    assert math.isclose(float(w[0] / w[1]), 10.0, rel_tol=1e-5)
