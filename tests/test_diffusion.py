"""Schedules, parameterisations and samplers of diffusion.py, with oracle networks."""
import pytest
import torch

from diffusion import (Diffusion, _timesteps, cosine_beta_schedule, ddim_sample, ddpm_sample,
                       linear_beta_schedule)


def test_schedules_pin_known_values():
    d = Diffusion(1000, "cosine")
    abar = d.alphas_cumprod
    assert abar[0].item() == pytest.approx(0.99996, abs=1e-5)
    # abar after 500 of 1000 steps: cos^2((0.5 + s)/(1 + s) pi/2) / cos^2(s/(1 + s) pi/2), s=0.008
    assert abar[499].item() == pytest.approx(0.493844, abs=1e-6)
    assert abar[-1].item() < 1e-4
    assert torch.all(abar[1:] <= abar[:-1])
    lin = linear_beta_schedule(1000)
    assert lin[0].item() == pytest.approx(1e-4) and lin[-1].item() == pytest.approx(0.02)
    assert cosine_beta_schedule(1000).max().item() <= 0.999


@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
def test_split_inverts_the_training_target(prediction):
    d = Diffusion(1000, "cosine", prediction)
    g = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(4, 6, 8, 8, generator=g), torch.randn(4, 6, 8, 8, generator=g)
    t = torch.tensor([0, 10, 500, 999])
    x_t = d.q_sample(x0.double(), t, noise.double())
    x0_hat, eps_hat = d.split(d.target_for(x0.double(), t, noise.double()), x_t, t)
    torch.testing.assert_close(x0_hat, x0.double(), atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(eps_hat, noise.double(), atol=1e-6, rtol=1e-6)


class Oracle(torch.nn.Module):
    """Knows the answer x0: returns the exact prediction the parameterisation asks for."""

    def __init__(self, d, x0):
        super().__init__()
        self.d, self.x0 = d, x0

    def forward(self, x_t, t, cond):
        a = self.d._abar(t, x_t)
        eps = (x_t - a.sqrt() * self.x0) / (1 - a).sqrt()
        return self.d.target_for(self.x0, t, eps)


@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
@pytest.mark.parametrize("steps", [1, 10, 50])
def test_ddim_with_an_oracle_returns_its_answer(prediction, steps):
    d = Diffusion(1000, "cosine", prediction)
    x0 = torch.rand(2, 6, 8, 8, dtype=torch.float64) * 2 - 1
    out = ddim_sample(Oracle(d, x0), torch.zeros_like(x0), d, steps=steps,
                      generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(out, x0, atol=1e-5, rtol=1e-5)


def test_ddpm_with_an_oracle_returns_its_answer_and_is_seeded():
    d = Diffusion(1000, "linear", "eps")
    x0 = torch.rand(1, 6, 4, 4, dtype=torch.float64)
    a = ddpm_sample(Oracle(d, x0), torch.zeros_like(x0), d, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(a, x0, atol=1e-5, rtol=1e-5)
    b = ddpm_sample(Oracle(d, x0), torch.zeros_like(x0), d, steps=25,
                    generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(b, x0, atol=1e-5, rtol=1e-5)


def test_timesteps_and_call_counts():
    d = Diffusion(1000)
    assert _timesteps(d, 20)[0] == 999 and _timesteps(d, 20)[-1] == 0
    assert len(_timesteps(d, 20)) == 20 and len(_timesteps(d, 5000)) == 1000
    calls = []

    def net(x, t, c):
        calls.append(x.shape[0])
        return torch.zeros_like(x)
    c = torch.zeros(3, 6, 4, 4)
    ddim_sample(net, c, d, steps=7)
    assert calls == [3] * 7  # guidance 1: one pass per step
    calls.clear()
    ddim_sample(net, c, d, steps=7, guidance=2.0)
    assert calls == [6] * 7  # conditional and unconditional in one doubled batch


def test_guidance_combines_conditional_and_unconditional():
    d = Diffusion(1000, prediction="x0")

    def net(x, t, c):  # x0 prediction = 1 with condition, 0 without
        return (c.abs().sum(dim=(1, 2, 3), keepdim=True) > 0).to(x.dtype).expand_as(x)
    c = torch.ones(1, 6, 4, 4)
    out = ddim_sample(net, c, d, steps=1, guidance=3.0)
    torch.testing.assert_close(out, torch.full_like(out, 3.0))


def test_condition_dropout_zeroes_the_condition():
    d = Diffusion(1000)
    seen = []

    def net(x, t, c):
        seen.append(c.abs().sum(dim=(1, 2, 3)))
        return torch.zeros_like(x)
    x0, c = torch.zeros(200, 6, 2, 2), torch.ones(200, 6, 2, 2)
    d.p_losses(net, x0, c, torch.zeros(200, dtype=torch.long), torch.zeros_like(x0), p_uncond=0.3,
               generator=torch.Generator().manual_seed(0))
    frac = (seen[0] == 0).float().mean().item()
    assert 0.2 < frac < 0.4


def test_unknown_settings_are_refused():
    with pytest.raises(ValueError, match="prediction"):
        Diffusion(prediction="score")
    with pytest.raises(ValueError, match="schedule"):
        Diffusion(schedule="sigmoid")
