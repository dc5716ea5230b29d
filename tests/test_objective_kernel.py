"""A loss resolved once: ``rdpo_zoo.kernels.preference_loss(..., objective=obj)`` takes a built
``rdpo_zoo.Objective`` as it is (its values were checked when it was built) and gives what the loss keywords give,
bit for bit, on every backend."""

from __future__ import annotations

import pytest
import torch

import rdpo_zoo
from rdpo_zoo import kernels as K
from rdpo_zoo import losses as L
from rdpo_zoo.kernels import loader
from rdpo_zoo.resolve import Objective

BACKENDS, DEVICE = ["reference"], "cpu"
try:
    from rdpo_zoo.kernels.log_ratio import is_interpreted

    if is_interpreted() or torch.cuda.is_available():
        BACKENDS.append("triton")
        DEVICE = "cpu" if is_interpreted() else "cuda"  # compiled kernels need device tensors
except ImportError:  # no Triton here: the reference backend alone
    pass


def _inputs(P=3, D=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    y, x_t, o_ref = (torch.randn(P, 2, D, generator=g).to(DEVICE) for _ in range(3))
    o_theta = torch.randn(P, 2, D, generator=g).to(DEVICE).requires_grad_(True)
    a, b, sigma = (torch.full((P,), v, device=DEVICE) for v in (0.9, -0.3, 0.5))
    return y, x_t, o_theta, o_ref, a, b, sigma


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("loss, loss_options, penalty, penalty_options", [
    ("rdpo", {"beta": "0.2"}, None, None),
    ("dpo", {"beta": "0.5", "clamp_eps": "0.1"}, "psi", ["lambda=3", "placement=outside"]),
    ("ipo", {}, "dpop", None),
])
def test_an_objective_gives_what_its_keywords_give_without_a_second_check(backend, loss, loss_options, penalty,
                                                                           penalty_options, monkeypatch):
    objective = rdpo_zoo.build_loss(loss, loss_options, penalty, penalty_options)
    y, x_t, o_theta, o_ref, a, b, sigma = _inputs()
    expected, r_expected = K.preference_loss(y, x_t, o_theta, o_ref, a, b, sigma, backend=backend,
                                             return_log_ratios=True, **objective.kwargs())
    (grad_expected,) = torch.autograd.grad(expected, o_theta)

    def no_second_check(*args):
        raise AssertionError("the Objective's loss arguments were checked again")

    monkeypatch.setattr(loader, "validate_loss_arguments", no_second_check)
    monkeypatch.setattr(loader, "check_loss_arguments", no_second_check)
    value, r = K.preference_loss(y, x_t, o_theta, o_ref, a, b, sigma, backend=backend, return_log_ratios=True,
                                 objective=objective)
    (grad,) = torch.autograd.grad(value, o_theta)
    assert torch.equal(value, expected) and torch.equal(r, r_expected) and torch.equal(grad, grad_expected)


def test_an_objective_checks_its_values_once_when_built():
    dpo, psi = L.PAIRWISE_LOSSES["dpo"], L.PENALTIES["psi"]
    with pytest.raises(ValueError, match=r"beta: expected a number > 0.0, got 0"):
        Objective("dpo", dpo, beta=0)
    with pytest.raises(ValueError, match=r"psi_lambda: expected a number >= 0.0, got -1"):
        Objective("dpo", dpo, beta=0.1, penalty_name="psi", penalty=psi, psi_lambda=-1)
    with pytest.raises(ValueError, match="placement: expected one of"):
        Objective("dpo", dpo, beta=0.1, penalty_name="psi", penalty=psi, placement="beside")
    with pytest.raises(ValueError, match="clamp_eps: expected 0 < ε < 1"):
        Objective("dpo", dpo, beta=0.1, clamp_eps=1.5)
    with pytest.raises(TypeError, match="penalty: expected an rdpo_zoo.losses.Penalty or None, got str"):
        Objective("dpo", dpo, beta=0.1, penalty="psi")
    assert type(Objective("dpo", dpo, beta=1).beta) is float  # typed once: the kernel reads it as it is


def test_an_objective_refuses_loss_keywords_beside_it_and_a_per_sample_loss():
    y, x_t, o_theta, o_ref, a, b, sigma = _inputs()
    objective = rdpo_zoo.build_loss("dpo")
    with pytest.raises(ValueError, match=r"objective: given with beta, psi_lambda; .*either objective= or"):
        K.preference_loss(y, x_t, o_theta, o_ref, a, b, sigma, beta=0.5, psi_lambda=1.0, objective=objective)
    with pytest.raises(ValueError, match=r"objective: given with margin;"):
        K.preference_loss(y, x_t, o_theta, o_ref, a, b, sigma, objective=objective, margin=1.0)
    with pytest.raises(TypeError, match=r"objective: expected an rdpo_zoo.Objective .*got dict"):
        K.preference_loss(y, x_t, o_theta, o_ref, a, b, sigma, objective=objective.kwargs())
    ppo = rdpo_zoo.build_loss("ppo-clip")
    with pytest.raises(TypeError, match=r"objective: its loss 'ppo-clip' is a PolicyGradientLoss, not a pairwise"):
        K.preference_loss(y, x_t, o_theta, o_ref, a, b, sigma, objective=ppo)
