"""The preference losses and RDPO's Ψ: values, gradients, signs."""

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from rdpo_zoo.losses import PairwiseLoss, pairwise_losses, preference_loss, resolve_loss


def _ratios(P=6, seed=0, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    return (scale * torch.randn(P, 2, generator=g, dtype=torch.float64)).requires_grad_()


def _per_pair_grads(r, **kwargs):
    (grad,) = torch.autograd.grad(pairwise_losses(r, **kwargs).sum(), r)
    return grad[:, 0], grad[:, 1]


def test_dpo_is_minus_log_sigmoid_of_the_scaled_gap():
    r = _ratios()
    beta = 0.7
    want = -torch.log(torch.sigmoid(beta * (r[:, 0] - r[:, 1])))
    torch.testing.assert_close(pairwise_losses(r, "dpo", beta), want)
    torch.testing.assert_close(pairwise_losses(r, "d3po", beta), want)
    torch.testing.assert_close(preference_loss(r, "dpo", beta), want.mean())


def test_dpo_is_finite_at_huge_margins():
    r = torch.tensor([[1e4, -1e4], [-1e4, 1e4]], dtype=torch.float32, requires_grad=True)
    loss = pairwise_losses(r, "dpo", beta=10.0)
    assert torch.isfinite(loss).all()
    assert loss[0].item() == 0.0 and loss[1].item() == pytest.approx(2e5, rel=1e-6)
    (grad,) = torch.autograd.grad(loss.sum(), r)
    assert torch.isfinite(grad).all()


def test_ipo_and_hinge_formulas():
    r = _ratios()
    beta = 0.25
    gap = r[:, 0] - r[:, 1]
    torch.testing.assert_close(pairwise_losses(r, "ipo", beta), (gap - 1 / (2 * beta)) ** 2)
    torch.testing.assert_close(pairwise_losses(r, "hinge", beta), torch.relu(1 - beta * gap))


@given(beta=st.floats(1e-3, 1e3), lam=st.floats(0.0, 1e4), seed=st.integers(0, 1000))
def test_psi_default_gradients(beta, lam, seed):
    """Intended Ψ: z = β(r_w − r_l) − λ·max(0, r_l); ∂L/∂r_w = −β·σ(−z), ∂L/∂r_l = σ(−z)·(β + λ·1[r_l > 0])."""
    r = _ratios(seed=seed)
    r_w, r_l = r[:, 0].detach(), r[:, 1].detach()
    z = beta * (r_w - r_l) - lam * torch.relu(r_l)
    g_w, g_l = _per_pair_grads(r, loss="rdpo", beta=beta, psi_lambda=lam)
    torch.testing.assert_close(g_w, -beta * torch.sigmoid(-z), rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(g_l, torch.sigmoid(-z) * (beta + lam * (r_l > 0).double()), rtol=1e-9, atol=1e-12)


@given(beta=st.floats(1e-3, 1e3), lam=st.floats(0.0, 1e4), seed=st.integers(0, 1000))
def test_psi_literal_gradients(beta, lam, seed):
    """Ψ as printed: z = β(r_w − r_l) + λ·max(0, r_l); ∂L/∂r_l = σ(−z)·(β − λ·1[r_l > 0]), so a large λ makes
    the loss *reward* a rising r_l."""
    r = _ratios(seed=seed)
    r_w, r_l = r[:, 0].detach(), r[:, 1].detach()
    z = beta * (r_w - r_l) + lam * torch.relu(r_l)
    g_w, g_l = _per_pair_grads(r, loss="dpo", beta=beta, penalty="psi-literal", psi_lambda=lam)
    torch.testing.assert_close(g_w, -beta * torch.sigmoid(-z), rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(g_l, torch.sigmoid(-z) * (beta - lam * (r_l > 0).double()), rtol=1e-9, atol=1e-12)


def test_psi_pushes_a_rising_loser_down_and_the_literal_form_pushes_it_up():
    """What Ψ adds beyond DPO: with both log-ratios positive and the gap already large, plain DPO barely moves
    r_l; the intended Ψ pushes it down hard; the printed Ψ pushes it up."""
    r = torch.tensor([[3.0, 0.5]], dtype=torch.float64, requires_grad=True)
    _, dpo_l = _per_pair_grads(r, loss="dpo", beta=5.0)
    _, psi_l = _per_pair_grads(r, loss="rdpo", beta=5.0, psi_lambda=100.0)
    _, literal_l = _per_pair_grads(r, loss="dpo", beta=5.0, penalty="psi-literal", psi_lambda=100.0)
    # gradient descent moves r_l by −grad: a positive grad lowers r_l.
    assert 0 < dpo_l.item() < 1e-4
    assert psi_l.item() > 10.0
    assert literal_l.item() < 0


def test_psi_is_inactive_while_the_loser_is_below_the_reference():
    r = torch.tensor([[0.2, -0.4], [0.1, -3.0]], dtype=torch.float64)
    torch.testing.assert_close(pairwise_losses(r, "rdpo", 2.0, psi_lambda=1e4), pairwise_losses(r, "dpo", 2.0))


def test_rdpo_is_dpo_plus_psi_one_implementation():
    r = _ratios(seed=3, scale=2.0)
    torch.testing.assert_close(
        pairwise_losses(r, "rdpo", 0.5, psi_lambda=7.0), pairwise_losses(r, "dpo", 0.5, penalty="psi", psi_lambda=7.0)
    )
    assert resolve_loss("rdpo")[0] is resolve_loss("dpo")[0]
    with pytest.raises(ValueError, match="penalty: loss 'rdpo' already includes the 'psi' penalty"):
        pairwise_losses(r, "rdpo", 0.5, penalty="psi", psi_lambda=7.0)


@pytest.mark.parametrize("loss", ["ipo", "hinge", "d3po"])
def test_psi_composes_with_any_loss(loss):
    r = torch.tensor([[1.0, 0.8], [0.3, 0.9]], dtype=torch.float64)
    plain = pairwise_losses(r, loss, 0.5)
    penalised = pairwise_losses(r, loss, 0.5, penalty="psi", psi_lambda=3.0)
    assert torch.all(penalised >= plain) and torch.any(penalised > plain)


def test_outside_placement_adds_the_penalty_to_the_loss():
    r = _ratios(seed=5, scale=2.0)
    want = pairwise_losses(r, "dpo", 0.3) + 4.0 * torch.relu(r[:, 1])
    torch.testing.assert_close(pairwise_losses(r, "dpo", 0.3, penalty="psi", psi_lambda=4.0, placement="outside"), want)
    want_dpop = pairwise_losses(r, "dpo", 0.3) + 4.0 * torch.relu(-r[:, 0])
    torch.testing.assert_close(
        pairwise_losses(r, "dpo", 0.3, penalty="dpop", psi_lambda=4.0, placement="outside"), want_dpop
    )


def test_ratio_clamp_is_a_trust_region_and_psi_sees_the_unclamped_loser():
    eps = 0.1
    r = torch.tensor([[0.5, 0.02], [0.01, -0.02], [0.03, 0.3]], dtype=torch.float64, requires_grad=True)
    g_w, g_l = _per_pair_grads(r, loss="dpo", beta=2.0, clamp_eps=eps)
    assert g_w[0].item() == 0.0 and g_l[0].item() != 0.0  # r_w = 0.5 > log(1.1): clamped, no gradient
    assert g_w[1].item() != 0.0 and g_l[1].item() != 0.0  # both inside the trust region
    assert g_l[2].item() == 0.0  # r_l = 0.3 clamped: DPO gives it no gradient ...
    _, g_l_psi = _per_pair_grads(r, loss="rdpo", beta=2.0, clamp_eps=eps, psi_lambda=10.0)
    assert g_l_psi[2].item() > 0.0  # ... but Ψ sees the unclamped 0.3 and still pushes it down
    clamped = pairwise_losses(r, "dpo", 2.0, clamp_eps=eps)
    want = torch.nn.functional.softplus(-2.0 * (r[:, 0].clamp(math.log(0.9), math.log(1.1))
                                                 - r[:, 1].clamp(math.log(0.9), math.log(1.1))))
    torch.testing.assert_close(clamped, want)


def test_a_custom_loss_formula_is_accepted():
    def squared_hinge(inputs):
        return torch.relu(1 - inputs.margin) ** 2

    r = _ratios()
    custom = PairwiseLoss("squared-hinge", squared_hinge, "test loss")
    torch.testing.assert_close(pairwise_losses(r, custom, 1.5), torch.relu(1 - 1.5 * (r[:, 0] - r[:, 1])) ** 2)


def test_bad_loss_arguments_are_named():
    r = _ratios()
    with pytest.raises(ValueError, match="loss: unknown loss 'dop'; known losses: d3po, dpo, hinge, ipo, rdpo"):
        pairwise_losses(r, "dop")
    with pytest.raises(ValueError, match="penalty: unknown penalty 'phi'"):
        pairwise_losses(r, "dpo", penalty="phi")
    with pytest.raises(ValueError, match="beta: expected a number > 0"):
        pairwise_losses(r, "dpo", beta=0.0)
    with pytest.raises(ValueError, match="psi_lambda: expected a number >= 0"):
        pairwise_losses(r, "rdpo", psi_lambda=-1.0)
    with pytest.raises(ValueError, match="clamp_eps: expected 0 < ε < 1"):
        pairwise_losses(r, "dpo", clamp_eps=1.5)
    with pytest.raises(ValueError, match="placement: expected one of"):
        pairwise_losses(r, "rdpo", placement="around")
    with pytest.raises(ValueError, match=r"log_ratios: expected shape \[P, 2\]"):
        pairwise_losses(torch.zeros(3, 3))
    with pytest.raises(ValueError, match="beta: expected a finite number"):
        pairwise_losses(r, "dpo", beta=float("nan"))


def test_nan_log_ratios_give_a_nan_loss():
    r = torch.tensor([[float("nan"), 0.1], [0.2, 0.1]], dtype=torch.float64)
    for loss in ("dpo", "ipo", "hinge", "rdpo"):
        out = pairwise_losses(r, loss, 1.0, clamp_eps=0.1 if loss == "dpo" else None)
        assert torch.isnan(out[0]) and torch.isfinite(out[1]), loss
