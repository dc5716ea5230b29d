"""The reference log-probabilities and paired log-ratios: the definition every kernel is held to."""

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from rdpo_zoo import gaussian_log_prob, paired_log_ratios, preference_loss, step_log_prob


def _rand(*shape, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=dtype)


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_gaussian_log_prob_matches_torch_distributions(reduction):
    y, mean = _rand(3, 4, 5, seed=1), _rand(3, 4, 5, seed=2)
    sigma = torch.tensor([0.3, 1.0, 2.5], dtype=torch.float64)
    got = gaussian_log_prob(y, mean, sigma, reduction)
    per_element = torch.distributions.Normal(mean, sigma.view(-1, 1, 1)).log_prob(y).reshape(3, -1)
    want = per_element.mean(1) if reduction == "mean" else per_element.sum(1)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


def _direct_log_ratios(y, x_t, o_theta, o_ref, a, b, sigma, reduction):
    """log π_θ − log π_ref from two full Gaussian log-densities (float64): the slow, obvious way."""
    P = y.shape[0]

    def branch(tensor, k):
        return tensor if tensor.dim() == 2 else tensor[:, k]

    columns = []
    for k in range(2):
        y_k, x_k = branch(y, k), branch(x_t, k)
        mu_theta = a.view(-1, 1) * x_k + b.view(-1, 1) * branch(o_theta, k)
        mu_ref = a.view(-1, 1) * x_k + b.view(-1, 1) * branch(o_ref, k)
        columns.append(gaussian_log_prob(y_k, mu_theta, sigma, reduction) - gaussian_log_prob(y_k, mu_ref, sigma, reduction))
    return torch.stack(columns, 1).reshape(P, 2)


@given(
    P=st.integers(1, 5),
    D=st.integers(1, 40),
    shared=st.tuples(st.booleans(), st.booleans(), st.booleans()),
    reduction=st.sampled_from(["mean", "sum"]),
    seed=st.integers(0, 2**16),
)
def test_factored_log_ratio_equals_difference_of_log_densities(P, D, shared, reduction, seed):
    share_x, share_o, share_y = shared
    g = torch.Generator().manual_seed(seed)

    def make(shared_layout):
        shape = (P, D) if shared_layout else (P, 2, D)
        return torch.randn(shape, generator=g, dtype=torch.float64)

    y, x_t, o_theta = make(share_y), make(share_x), make(share_o)
    o_ref = o_theta + 0.3 * torch.randn(o_theta.shape, generator=g, dtype=torch.float64)
    a = 0.5 + torch.rand(P, generator=g, dtype=torch.float64)
    b = torch.randn(P, generator=g, dtype=torch.float64)
    sigma = 0.1 + torch.rand(P, generator=g, dtype=torch.float64)
    got = paired_log_ratios(y, x_t, o_theta, o_ref, a, b, sigma, reduction)
    want = _direct_log_ratios(y, x_t, o_theta, o_ref, a, b, sigma, reduction)
    assert got.shape == (P, 2) and got.dtype == torch.float64
    torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-9)


def test_shared_layout_equals_per_branch_layout_with_copies():
    P, D = 3, 17
    y, x_t, o_theta = _rand(P, 2, D, seed=1), _rand(P, D, seed=2), _rand(P, D, seed=3)
    o_ref = o_theta + 0.1 * _rand(P, D, seed=4)
    args = (0.9, -0.7, 0.4)
    shared = paired_log_ratios(y, x_t, o_theta, o_ref, *args)
    copied = paired_log_ratios(
        y, x_t.unsqueeze(1).expand(P, 2, D), o_theta.unsqueeze(1).repeat(1, 2, 1), o_ref.unsqueeze(1).repeat(1, 2, 1), *args
    )
    torch.testing.assert_close(shared, copied, rtol=1e-12, atol=1e-12)
    assert not torch.allclose(shared[:, 0], shared[:, 1])  # the branches' y differ, so their ratios do


def test_column_zero_is_the_preferred_branch():
    """Moving o_θ towards the preferred child raises r_w and lowers r_l."""
    P, D = 2, 64
    x_t, o_ref = _rand(P, D, seed=1), _rand(P, D, seed=2)
    a, b, sigma = 1.0, 0.5, 0.2
    y = torch.stack([a * x_t + b * (o_ref + 1.0), a * x_t + b * (o_ref - 1.0)], 1)
    r = paired_log_ratios(y, x_t, o_ref + 0.1, o_ref, a, b, sigma)
    assert torch.all(r[:, 0] > 0) and torch.all(r[:, 1] < 0)


def test_gradient_wrt_o_theta_is_the_analytic_one():
    """∂r_k/∂o_θ = 2·s·b·(y_k − a·x_t − b·o_θ), s = 1/(2σ²D) for the mean reduction."""
    P, D = 2, 9
    y, x_t = _rand(P, 2, D, seed=1), _rand(P, D, seed=2)
    o_theta, o_ref = _rand(P, D, seed=3).requires_grad_(), _rand(P, D, seed=4)
    a, b, sigma = torch.tensor([0.9, 1.1]), torch.tensor([-0.5, 0.3]), torch.tensor([0.2, 0.7])
    weights = _rand(P, 2, seed=5)
    r = paired_log_ratios(y, x_t, o_theta, o_ref, a, b, sigma)
    (grad,) = torch.autograd.grad((r * weights).sum(), o_theta)
    s = (1 / (2 * sigma.double() ** 2 * D)).view(P, 1, 1)
    per_branch = 2 * s * b.double().view(P, 1, 1) * (y - a.double().view(P, 1, 1) * x_t.unsqueeze(1)
                                                   - b.double().view(P, 1, 1) * o_theta.detach().unsqueeze(1))
    want = (weights.unsqueeze(-1) * per_branch).sum(1)
    torch.testing.assert_close(grad, want, rtol=1e-10, atol=1e-12)


def test_factored_form_keeps_float32_accurate_at_sd15_size():
    """The factored form in fp32 stays within 1e-4 of the fp64 value at D = 16384; the naive difference of two
    log-densities does measurably worse (the reason for the factored form)."""
    P, D = 8, 16384
    g = torch.Generator().manual_seed(0)
    y, x_t = torch.randn(P, 2, D, generator=g), torch.randn(P, D, generator=g)
    o_ref = torch.randn(P, D, generator=g)
    o_theta = o_ref + 0.02 * torch.randn(P, D, generator=g)
    a, b, sigma = 1.0, -0.3, 0.3
    exact = paired_log_ratios(y.double(), x_t.double(), o_theta.double(), o_ref.double(), a, b, sigma, "sum")
    factored = paired_log_ratios(y, x_t, o_theta, o_ref, a, b, sigma, "sum")
    naive = torch.stack(
        [step_log_prob(y[:, k], x_t, o_theta, a, b, sigma, "sum") - step_log_prob(y[:, k], x_t, o_ref, a, b, sigma, "sum")
         for k in range(2)], 1)
    factored_error = (factored.double() - exact).abs().max().item()
    naive_error = (naive.double() - exact).abs().max().item()
    assert factored_error < 1e-4 * max(1.0, exact.abs().max().item())
    assert naive_error > 5 * factored_error


def test_x_t_may_be_omitted_when_a_is_zero():
    y, o_theta, o_ref = _rand(2, 2, 5), _rand(2, 2, 5, seed=1), _rand(2, 2, 5, seed=2)
    with_zeros = paired_log_ratios(y, torch.zeros(2, 2, 5, dtype=torch.float64), o_theta, o_ref, 0.0, 1.0, 1.0)
    torch.testing.assert_close(paired_log_ratios(y, None, o_theta, o_ref, 0.0, 1.0, 1.0), with_zeros)
    with pytest.raises(ValueError, match="x_t: None is only allowed when a == 0"):
        paired_log_ratios(y, None, o_theta, o_ref, 0.5, 1.0, 1.0)


def test_diffusion_dpo_objective_is_dpo_with_beta_5000():
    """Salesforce DiffusionDPO train.py: model_losses = mean((unet(x_t) − ε)²) per image, inside = −½·β·((m_w − m_l)
    − (ref_w − ref_l)), loss = −logσ(inside). With y = ε (shared, stride 0), a = 0, b = 1, σ = 1 and the mean
    reduction, our dpo with β = 5000 is the same number."""
    P, D, beta = 4, 64, 5000.0
    g = torch.Generator().manual_seed(3)
    eps = torch.randn(P, D, generator=g, dtype=torch.float64)
    model_pred = torch.randn(P, 2, D, generator=g, dtype=torch.float64) * 0.01 + eps.unsqueeze(1)
    ref_pred = torch.randn(P, 2, D, generator=g, dtype=torch.float64) * 0.01 + eps.unsqueeze(1)
    x_t = torch.randn(P, 2, D, generator=g, dtype=torch.float64)  # never read: a = 0

    model_losses = (model_pred - eps.unsqueeze(1)).pow(2).mean(-1)
    ref_losses = (ref_pred - eps.unsqueeze(1)).pow(2).mean(-1)
    inside = -0.5 * beta * ((model_losses[:, 0] - model_losses[:, 1]) - (ref_losses[:, 0] - ref_losses[:, 1]))
    public = -torch.nn.functional.logsigmoid(inside).mean()

    r = paired_log_ratios(eps.unsqueeze(1).expand(P, 2, D), x_t, model_pred, ref_pred, 0.0, 1.0, 1.0, "mean")
    ours = preference_loss(r, "dpo", beta=beta)
    torch.testing.assert_close(ours, public, rtol=1e-10, atol=1e-12)
    assert 0.01 < public.item() < 5  # a non-trivial value, not a saturated one


def test_nan_inputs_propagate():
    y = _rand(2, 2, 6)
    y[1, 0, 3] = float("nan")
    r = paired_log_ratios(y, _rand(2, 6, seed=1), _rand(2, 6, seed=2), _rand(2, 6, seed=3), 1.0, 0.5, 0.3)
    assert torch.isnan(r[1, 0]) and not torch.isnan(r[0]).any() and not torch.isnan(r[1, 1])


def test_bad_inputs_name_the_argument():
    P, D = 2, 5
    y, x_t, o = _rand(P, 2, D), _rand(P, D), _rand(P, D)
    coefficients = (1.0, 0.5, 0.3)
    with pytest.raises(ValueError, match=r"o_ref: expected shape \[P, D\] = \[2, 5\]"):
        paired_log_ratios(y, x_t, o, _rand(P, D + 1), *coefficients)
    with pytest.raises(ValueError, match=r"x_t: expected shape"):
        paired_log_ratios(y, _rand(P, 3, D), o, o, *coefficients)
    with pytest.raises(TypeError, match="o_theta: expected a floating tensor"):
        paired_log_ratios(y, x_t, torch.ones(P, D, dtype=torch.int64), o, *coefficients)
    with pytest.raises(TypeError, match="x_t: expected a torch.Tensor"):
        paired_log_ratios(y, [[1.0]], o, o, *coefficients)
    with pytest.raises(ValueError, match="o_theta: expected a tensor on cpu"):
        paired_log_ratios(y, x_t, torch.empty(P, D, device="meta"), o, *coefficients)
    with pytest.raises(ValueError, match="reduction: expected one of 'mean', 'sum'"):
        paired_log_ratios(y, x_t, o, o, *coefficients, reduction="avg")
    with pytest.raises(ValueError, match=r"sigma: expected a scalar or a \[P\] = \[2\] tensor"):
        paired_log_ratios(y, x_t, o, o, 1.0, 0.5, torch.ones(3))
    with pytest.raises(ValueError, match="sigma: step 1 has σ = -0.1"):
        paired_log_ratios(y, x_t, o, o, 1.0, 0.5, torch.tensor([0.3, -0.1]))
    with pytest.raises(ValueError, match="sigma: step 0 has σ = 1e-08"):
        paired_log_ratios(y, x_t, o, o, 1.0, 0.5, 1e-8)
    with pytest.raises(ValueError, match="y: expected P >= 1"):
        paired_log_ratios(torch.empty(0, 2, D), torch.empty(0, D), torch.empty(0, D), torch.empty(0, D), *coefficients)
    # A caller may lower the floor explicitly, for a step it knows to be meaningful.
    assert torch.isfinite(paired_log_ratios(y, x_t, o, o + 1e-3, 1.0, 0.5, 1e-6, min_sigma=0.0)).all()


def test_sum_is_d_times_mean():
    y, x_t, o_theta, o_ref = _rand(3, 2, 11), _rand(3, 11, seed=1), _rand(3, 11, seed=2), _rand(3, 11, seed=3)
    mean = paired_log_ratios(y, x_t, o_theta, o_ref, 0.8, 0.4, 0.5, "mean")
    total = paired_log_ratios(y, x_t, o_theta, o_ref, 0.8, 0.4, 0.5, "sum")
    torch.testing.assert_close(total, 11 * mean)
    assert not math.isclose(total.abs().sum().item(), 0.0)


def test_a_one_dimensional_y_is_named_as_such():
    with pytest.raises(ValueError, match=r"y: expected shape \[P, 2, D\]"):
        paired_log_ratios(_rand(5), _rand(1, 5), _rand(1, 5), _rand(1, 5), 1.0, 0.5, 0.3)


def test_host_coefficients_are_checked_without_reading_the_device():
    """Numbers and CPU tensors (the trainer's coefficients) are checked on the host and copied over: nothing is read
    back from the device, so a GPU call costs no sync. Meta tensors stand for the device: reading one raises."""
    from rdpo_zoo.reference import check_paired_inputs

    P, D = 3, 4
    y, x_t, o = (torch.empty(*shape, device="meta") for shape in ((P, 2, D), (P, D), (P, D)))
    spec = check_paired_inputs(y, x_t, o, o, torch.tensor([0.9, 1.0, 1.1]), -0.2, torch.tensor([0.3, 0.2, 0.1]))
    assert spec.a.device.type == spec.sigma.device.type == "meta" and spec.sigma.shape == (P,)
    with pytest.raises(ValueError, match="sigma: step 2 has σ = -0.1"):
        check_paired_inputs(y, x_t, o, o, 1.0, 0.5, torch.tensor([0.3, 0.2, -0.1]))
    with pytest.raises(ValueError, match="x_t: None is only allowed when a == 0"):
        check_paired_inputs(y, None, o, o, torch.tensor([0.0, 0.0, 0.5]), 1.0, 1.0)
    # coefficients already on the device are read back once: a meta device cannot, and says so
    with pytest.raises(NotImplementedError):
        check_paired_inputs(y, x_t, o, o, torch.ones(P, device="meta"), 0.5, 0.3)
