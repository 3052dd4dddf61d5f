"""Value tests of the gradient methods with memory, against hand computations and TorchJD."""

from __future__ import annotations

import pytest
import torch
from scipy.optimize import least_squares
from torchjd import aggregation as tja

from mtlagg.aggregators import CRMOGM, DBMTL, MGDA, PCD, PIVRG, ExcessMTL, GradNorm, GradVac, MoCo
from mtlagg.aggregators._weighted_fairgrad import solve_weighted_fairgrad
from mtlagg.aggregators.gradvac import parameter_groups
from mtlagg.solvers import project_onto_simplex


def jacobians(seed: int, steps: int = 3, T: int = 3, n: int = 8) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(T, n, generator=generator, dtype=torch.float64) for _ in range(steps)]


LOSSES = [torch.tensor([0.9, 2.5, 0.3], dtype=torch.float64), torch.tensor([0.7, 2.0, 0.35], dtype=torch.float64)]
LOSSES.append(torch.tensor([0.6, 1.2, 0.2], dtype=torch.float64))


class TestGradNorm:
    def test_two_steps_by_hand(self):
        gn = GradNorm(alpha=1.5, weight_lr=0.1, weight_optimizer="sgd")
        w = torch.ones(3, dtype=torch.float64)
        L0 = LOSSES[0]
        for J, losses in zip(jacobians(0), LOSSES):
            G = J @ J.T
            torch.testing.assert_close(gn.weights(G, losses=losses), w)
            norms = J.norm(dim=1)
            relative = losses / L0
            target = (w * norms).mean() * (relative / relative.mean()) ** 1.5
            w = w - 0.1 * torch.sign(w * norms - target) * norms
            w = w.clamp_min(0) * 3 / w.clamp_min(0).sum()
        torch.testing.assert_close(gn.current_weights, w)

    def test_initial_losses_given(self):
        gn = GradNorm(weight_lr=0.1, weight_optimizer="sgd", initial_losses=[1.0, 1.0, 1.0])
        J = jacobians(1)[0]
        gn.weights(J @ J.T, losses=LOSSES[0])
        norms = J.norm(dim=1)
        rates = LOSSES[0] / LOSSES[0].mean()
        w = 1 - 0.1 * torch.sign(norms - norms.mean() * rates**1.5) * norms
        torch.testing.assert_close(gn.current_weights, w * 3 / w.sum())


def gradvac_reference(grads: torch.Tensor, groups, targets: torch.Tensor, orders, beta: float) -> torch.Tensor:
    """GradVac as written in the paper / LibMTL: explicit vectors, one pair at a time."""
    T = grads.shape[0]
    modified = grads.clone()
    for i in range(T):
        for j in orders[i].tolist():
            for k, (start, stop) in enumerate(groups):
                gi, gj = modified[i, start:stop], grads[j, start:stop]
                phi = gi @ gj / (gi.norm() * gj.norm() + 1e-8)
                hat = targets[k, i, j]
                if phi < hat:
                    w = gi.norm() * (hat * (1 - phi**2).sqrt() - phi * (1 - hat**2).sqrt())
                    w = w / (gj.norm() * (1 - hat**2).sqrt() + 1e-8)
                    modified[i, start:stop] = gi + w * gj
                targets[k, i, j] = (1 - beta) * hat + beta * phi
    return modified.sum(dim=0)


class TestGradVac:
    @pytest.mark.parametrize("group_type", ["whole", "layer", "tensor"])
    def test_matches_the_pairwise_loop(self, group_type):
        # (weight space loses precision on groups of one or two coordinates, where cosines are +-1)
        sizes, names = [3, 3, 4, 3], ["a.weight", "a.bias", "b.weight", "b.bias"]
        gv = GradVac(beta=0.3, group_type=group_type, generator=torch.Generator().manual_seed(0))
        groups = [(s, 13 if e < 0 else e) for _, s, e in parameter_groups(group_type, sizes, names)]
        targets = torch.zeros(len(groups), 4, 4, dtype=torch.float64)
        replay = torch.Generator().manual_seed(0)
        for J in jacobians(3, steps=3, T=4, n=13):
            keys = torch.rand(4, 4, generator=replay)
            keys.fill_diagonal_(2.0)
            orders = keys.argsort(dim=1)[:, :3]
            expected = gradvac_reference(J, groups, targets, orders, 0.3)
            from mtlagg.aggregators._base import AggregatorInput

            got = gv.compute_direction(AggregatorInput(4, jacobian=J, block_sizes=sizes, block_names=names))
            torch.testing.assert_close(got, expected)
        torch.testing.assert_close(gv._state["targets"], targets)

    def test_two_tasks_match_torchjd(self):
        gv = GradVac(beta=0.5)
        reference = tja.GradVac(beta=0.5)
        for J in jacobians(4, steps=3, T=2, n=6):
            torch.testing.assert_close(gv(J), reference(J))

    def test_layer_groups_follow_the_parameter_names(self):
        groups = parameter_groups("layer", [6, 2, 4, 2], ["enc.0.weight", "enc.0.bias", "enc.2.weight", "enc.2.bias"])
        assert groups == [("enc.0", 0, 8), ("enc.2", 8, 14)]

    def test_layer_groups_need_names(self):
        with pytest.raises(ValueError, match=r"pass shared_params as model\.named_parameters"):
            parameter_groups("layer", [2, 2], ["shared_params[0]", "shared_params[1]"])

    def test_group_structure_change_raises(self):
        from mtlagg.aggregators._base import AggregatorInput

        gv = GradVac(group_type="tensor")
        J = torch.randn(2, 5, dtype=torch.float64)
        gv.compute_direction(AggregatorInput(2, jacobian=J, block_sizes=[2, 3], block_names=["a", "b"]))
        with pytest.raises(ValueError, match="call reset"):
            gv.compute_direction(AggregatorInput(2, jacobian=J, block_sizes=[1, 4], block_names=["a", "b"]))


class TestMoCo:
    def test_three_steps_by_hand(self):
        moco = MoCo(beta=0.5, beta_sigma=0.5, gamma=0.1, gamma_sigma=0.5, rho=0.1)
        y = torch.zeros(3, 8, dtype=torch.float64)
        lam = torch.full((3,), 1 / 3, dtype=torch.float64)
        for k, (J, losses) in enumerate(zip(jacobians(5), LOSSES), start=1):
            normalised = J / (J.norm(dim=1, keepdim=True) + 1e-8) * losses[:, None]
            y = y - 0.5 / k**0.5 * (y - normalised)
            lam = project_onto_simplex(lam - 0.1 / k**0.5 * (y @ y.T + 0.1 * torch.eye(3, dtype=torch.float64)) @ lam)
            torch.testing.assert_close(moco(J, losses=losses), y.T @ lam)
        torch.testing.assert_close(moco.current_weights, lam)

    def test_softmax_projection_is_libmtls(self):
        moco = MoCo(projection="softmax", normalize=False)
        J = jacobians(6)[0]
        y = 0.5 * J
        start = torch.full((3,), 1 / 3, dtype=torch.float64)
        lam = torch.softmax(start - 0.1 * y @ y.T @ start, 0)
        torch.testing.assert_close(moco(J, losses=LOSSES[0]), y.T @ lam)


class TestDBMTL:
    def test_three_steps_by_hand(self):
        db = DBMTL(beta=0.9, beta_sigma=0.5)
        buffer = torch.zeros(3, 8, dtype=torch.float64)
        for k, (J, losses) in enumerate(zip(jacobians(7), LOSSES), start=1):
            log_grads = J / (losses[:, None] + 1e-8)
            beta = 0.9 / k**0.5
            buffer = log_grads + beta * (buffer - log_grads)
            norms = buffer.norm(dim=1)
            expected = (norms.max() / (norms + 1e-8)) @ buffer
            torch.testing.assert_close(db(J, losses=losses), expected)

    def test_every_task_gets_the_largest_norm(self):
        db = DBMTL(beta=0.0)
        J = torch.diag(torch.tensor([1.0, 10.0, 0.1], dtype=torch.float64))
        d = db(J, losses=torch.ones(3, dtype=torch.float64))
        torch.testing.assert_close(d, torch.full((3,), 10.0, dtype=torch.float64), rtol=1e-6, atol=0)


class TestExcessMTL:
    def test_three_steps_by_hand(self):
        ex = ExcessMTL(robust_step_size=0.5)
        accumulator = torch.zeros(3, 8, dtype=torch.float64)
        w = torch.full((3,), 1 / 3, dtype=torch.float64)
        baseline = None
        for J in jacobians(8):
            accumulator += J**2
            excess = (J**2 / torch.sqrt(accumulator + 1e-7)).sum(dim=1)
            if baseline is None:
                baseline = excess
            else:
                w = w * torch.exp(0.5 * excess / baseline)
                w = w / w.sum()
            torch.testing.assert_close(ex.weights_from_jacobian(J), w)


class TestPCD:
    @pytest.mark.parametrize("seed", [0, 1, 2])
    def test_matches_torchjd(self, seed):
        pcd = PCD(tau=0.1, beta=0.9)
        reference = tja.PCDWeighting(tau=0.1, beta=0.9)
        generator = torch.Generator().manual_seed(seed)
        for _ in range(3):
            J = torch.randn(4, 6, generator=generator, dtype=torch.float64)
            J[1:] *= torch.rand(3, 1, generator=generator, dtype=torch.float64) * 5
            G = J @ J.T
            torch.testing.assert_close(pcd.weights(G), reference(G), rtol=1e-7, atol=1e-9)

    def test_matches_the_primal_problem_solved_by_cvxpy(self):
        cp = pytest.importorskip("cvxpy")
        generator = torch.Generator().manual_seed(3)
        for _ in range(5):
            J = torch.randn(4, 7, generator=generator, dtype=torch.float64)
            d = PCD(tau=0.3, beta=0.0, eps=0.0)(J)
            unit = (J / J.norm(dim=1, keepdim=True)).numpy()
            x = cp.Variable(7)
            constraints = [unit[j] @ x >= 0.3 for j in range(1, 4)]
            cp.Problem(cp.Minimize(0.5 * cp.sum_squares(x - unit[0])), constraints).solve(solver=cp.CLARABEL)
            expected = torch.tensor(x.value) * J[0].norm() / torch.tensor(x.value).norm()
            torch.testing.assert_close(d, expected, rtol=1e-5, atol=1e-7)

    def test_infeasible_constraints_fall_back_to_the_primary_gradient(self):
        J = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, -1.0]], dtype=torch.float64)
        with pytest.warns(RuntimeWarning, match="cannot all hold"):
            d = PCD(tau=0.1)(J)
        torch.testing.assert_close(d, J[0])

    def test_infeasible_with_a_zero_tau_task(self):
        J = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, -1.0]], dtype=torch.float64)
        with pytest.warns(RuntimeWarning, match="cannot all hold"):
            PCD(tau=torch.tensor([0.1, 0.0]))(J)


class TestCRMOGM:
    def test_moving_average_of_mgda_weights(self):
        cr = CRMOGM(MGDA(), alpha=0.7)
        mgda = MGDA()
        smoothed = None
        for J in jacobians(9):
            current = mgda.weights(J @ J.T)
            smoothed = current if smoothed is None else 0.7 * smoothed + 0.3 * current
            torch.testing.assert_close(cr.weights(J @ J.T), smoothed)

    def test_initial_weights_and_needs_of_the_wrapped_aggregator(self):
        from mtlagg.aggregators import UW, UPGrad

        cr = CRMOGM(UPGrad(), alpha=0.5, initial_weights=torch.tensor([0.2, 0.3, 0.5]))
        assert cr.needs == UPGrad.needs
        weights = cr.weights(torch.eye(3, dtype=torch.float64))
        # UPGrad of orthonormal gradients is the mean: 1/3 each
        torch.testing.assert_close(weights, 0.5 * torch.tensor([0.2, 0.3, 0.5]).double() + 0.5 / 3)
        loss_based = CRMOGM(UW())
        assert loss_based.needs == UW.needs and loss_based.uses_losses


class TestPIVRG:
    def test_weighted_fairgrad_solution_matches_scipy(self):
        generator = torch.Generator().manual_seed(10)
        for T in (2, 3, 6):
            J = torch.randn(T, 9, generator=generator, dtype=torch.float64)
            G = J @ J.T
            p = torch.rand(T, generator=generator, dtype=torch.float64) + 0.5
            x = solve_weighted_fairgrad(G, p)
            torch.testing.assert_close(G @ x, torch.sqrt(p / x), rtol=1e-9, atol=0)
            result = least_squares(
                lambda v, G=G, p=p: G.numpy() @ v - (p.numpy() / v) ** 0.5,
                x0=[1 / T] * T,
                bounds=(1e-12, float("inf")),
                xtol=1e-15,
                ftol=1e-15,
                gtol=1e-15,
            )
            torch.testing.assert_close(x, torch.tensor(result.x, dtype=torch.float64), rtol=1e-5, atol=0)

    def test_tiny_gradients(self):
        J = 1e-6 * torch.randn(3, 5, generator=torch.Generator().manual_seed(11), dtype=torch.float64)
        x = solve_weighted_fairgrad(J @ J.T, torch.ones(3, dtype=torch.float64))
        torch.testing.assert_close(J @ J.T @ x, x**-0.5, rtol=1e-9, atol=0)

    def test_zero_gradient_gets_no_weight(self):
        J = torch.randn(3, 5, generator=torch.Generator().manual_seed(12), dtype=torch.float64)
        J[2] = 0
        x = solve_weighted_fairgrad(J @ J.T, torch.ones(3, dtype=torch.float64))
        assert x[2] == 0
        torch.testing.assert_close(solve_weighted_fairgrad(J[:2] @ J[:2].T, torch.ones(2)), x[:2])

    def test_priorities_and_weights(self):
        pivrg = PIVRG(bound=2.0, mintemp=10.0, max_norm=None)
        pivrg.set_scores([5.0, -3.0, 40.0])
        temperature = max(43 / torch.log(torch.tensor(2.0)).item(), 10)
        p = 3 * torch.softmax(torch.tensor([5.0, -3.0, 40.0], dtype=torch.float64) / temperature, 0)
        torch.testing.assert_close(pivrg.priorities(3), p)
        assert float(p.max() / p.min()) == pytest.approx(2.0)
        J = jacobians(13)[0]
        w = pivrg.weights(J @ J.T)
        torch.testing.assert_close(w, 3 * solve_weighted_fairgrad(J @ J.T, p))

    def test_clip_scales_the_direction(self):
        J = 10 * jacobians(14)[0]
        w = PIVRG(max_norm=0.5).weights(J @ J.T)
        assert float((w @ J).norm()) == pytest.approx(0.5)

    def test_scores_of_the_wrong_length(self):
        pivrg = PIVRG()
        pivrg.set_scores([1.0, 2.0])
        with pytest.raises(ValueError, match=r"PIVRG has 2 scores \(set_scores\) but this step has 3 tasks"):
            pivrg.weights(torch.eye(3))


def test_gradvac_groups_from_the_engines_block_gramians():
    """Through mtlagg.backward the per-layer Gramians come from the engine; same result as from J."""
    import mtlagg

    from ._toys import make_model, mse_losses, toy_batch

    model = make_model(0)
    batch = toy_batch(torch.Generator().manual_seed(0))
    named = list(model.trunk.named_parameters())
    J = mtlagg.jacobian(mse_losses(model, batch), [p for _, p in named])
    from mtlagg.aggregators._base import AggregatorInput

    expected = GradVac(group_type="layer", generator=torch.Generator().manual_seed(1)).compute_direction(
        AggregatorInput(3, jacobian=J, block_sizes=[p.numel() for _, p in named], block_names=[n for n, _ in named])
    )
    model.zero_grad()
    gv = GradVac(group_type="layer", generator=torch.Generator().manual_seed(1))
    seen = []
    original = gv._group_gramians

    def spy(inputs, groups):
        seen.append(inputs.block_gramians is not None)
        return original(inputs, groups)

    gv._group_gramians = spy
    mtlagg.backward(mse_losses(model, batch), named, gv)
    got = torch.cat([p.grad.reshape(-1) for _, p in named])
    torch.testing.assert_close(got, expected)
    assert seen == [True]


def test_weighted_fairgrad_without_solution_raises():
    from mtlagg.errors import SolverError

    g = torch.tensor([[1.0, 2.0], [-1.0, -2.0]], dtype=torch.float64)
    with pytest.raises(SolverError, match="0 is in the convex hull of the task gradients"):
        solve_weighted_fairgrad(g @ g.T, torch.ones(2, dtype=torch.float64))
    duplicated = torch.tensor([[1.0, 2.0], [1.0, 2.0], [0.5, -1.0]], dtype=torch.float64)
    x = solve_weighted_fairgrad(duplicated @ duplicated.T, torch.ones(3, dtype=torch.float64))
    torch.testing.assert_close(duplicated @ duplicated.T @ x, x**-0.5)


def test_standard_qp_matches_cvxpy_on_random_problems():
    cp = pytest.importorskip("cvxpy")
    from mtlagg.aggregators._standard_qp import solve_standard_qp

    generator = torch.Generator().manual_seed(20)
    for trial in range(10):
        n = 2 + trial % 6
        M = torch.randn(n, max(1, n - trial % 3), generator=generator, dtype=torch.float64)  # some singular
        Q = M @ M.T
        q = torch.randn(n, generator=generator, dtype=torch.float64)
        A = torch.rand(1, n, generator=generator, dtype=torch.float64) + 0.1
        x, _ = solve_standard_qp(Q, q, A, torch.ones(1, dtype=torch.float64))
        v = cp.Variable(n)
        problem = cp.Problem(
            cp.Minimize(0.5 * cp.quad_form(v, cp.psd_wrap(Q.numpy())) + q.numpy() @ v), [A.numpy() @ v == 1, v >= 0]
        )
        problem.solve(solver=cp.CLARABEL)
        ours = float(0.5 * x @ Q @ x + q @ x)
        assert ours <= problem.value + 1e-7 * (1 + abs(problem.value))
        assert float((A @ x - 1).abs()) < 1e-8 and bool((x >= 0).all())
