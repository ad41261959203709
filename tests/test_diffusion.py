"""Schedules, parameterisations and samplers of diffusion.py, with oracle networks: one that
knows the answer, and the exact denoiser of Gaussian data, whose samples are known in closed
form (so a wrong update rule fails, not only a wrong last step)."""
import pytest
import torch

from diffusion import (Diffusion, _timesteps, cosine_beta_schedule, ddim_sample, ddpm_sample,
                       linear_beta_schedule)


def test_schedules_pin_known_values():
    d = Diffusion(1000, "cosine", "v")
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
    out = ddim_sample(Oracle(d, x0), torch.zeros_like(x0), d, steps, 0.0, 1.0,
                      generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(out, x0, atol=1e-5, rtol=1e-5)


def test_ddpm_with_an_oracle_returns_its_answer_and_is_seeded():
    d = Diffusion(1000, "linear", "eps")
    x0 = torch.rand(1, 6, 4, 4, dtype=torch.float64)
    a = ddpm_sample(Oracle(d, x0), torch.zeros_like(x0), d, 1000, 1.0,
                    generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(a, x0, atol=1e-5, rtol=1e-5)
    b = ddpm_sample(Oracle(d, x0), torch.zeros_like(x0), d, 25, 1.0,
                    generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(b, x0, atol=1e-5, rtol=1e-5)


def test_timesteps_and_call_counts():
    d = Diffusion(1000, "cosine", "v")
    assert _timesteps(d, 20)[0] == 999 and _timesteps(d, 20)[-1] == 0
    assert len(_timesteps(d, 20)) == 20 and len(_timesteps(d, 5000)) == 1000
    calls = []

    def net(x, t, c):
        calls.append(x.shape[0])
        return torch.zeros_like(x)
    c = torch.zeros(3, 6, 4, 4)
    ddim_sample(net, c, d, 7, 0.0, 1.0)
    assert calls == [3] * 7  # guidance 1: one pass per step
    calls.clear()
    ddim_sample(net, c, d, 7, 0.0, 2.0)
    assert calls == [6] * 7  # conditional and unconditional in one doubled batch


def test_guidance_combines_conditional_and_unconditional():
    d = Diffusion(1000, "cosine", "x0")

    def net(x, t, c):  # x0 prediction = 1 with condition, 0 without
        return (c.abs().sum(dim=(1, 2, 3), keepdim=True) > 0).to(x.dtype).expand_as(x)
    c = torch.ones(1, 6, 4, 4)
    out = ddim_sample(net, c, d, 1, 0.0, 3.0)
    torch.testing.assert_close(out, torch.full_like(out, 3.0))


def test_unknown_settings_are_refused():
    with pytest.raises(ValueError, match="prediction"):
        Diffusion(1000, "cosine", "score")
    with pytest.raises(ValueError, match="schedule"):
        Diffusion(1000, "sigmoid", "v")


# ---------------------------------------------------------------- Gaussian data: exact samplers
MU, S = 0.3, 0.5  # data x0 ~ N(MU, S^2), independent elements


class GaussianDenoiser(torch.nn.Module):
    """The optimal network for Gaussian data: E[x0 | x_t] = MU + sqrt(a) S^2 / (a S^2 + 1 - a)
    (x_t - sqrt(a) MU), given in the parameterisation the diffusion asks for. It records the
    states it is called with, i.e. every intermediate state of a sampler."""

    def __init__(self, d):
        super().__init__()
        self.d, self.states = d, []

    def forward(self, x_t, t, cond):
        self.states.append((int(t[0]), x_t.clone()))
        a = self.d._abar(t, x_t)
        x0 = MU + a.sqrt() * S ** 2 / (a * S ** 2 + 1 - a) * (x_t - a.sqrt() * MU)
        eps = (x_t - a.sqrt() * x0) / (1 - a).sqrt()
        return self.d.target_for(x0, t, eps)


@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
@pytest.mark.parametrize("schedule", ["cosine", "linear"])
def test_ddim_follows_the_probability_flow_of_gaussian_data(prediction, schedule):
    # The probability-flow ODE of Gaussian data keeps each sample's standard score
    # z = (x_t - sqrt(a_t) MU) / sqrt(a_t S^2 + 1 - a_t) fixed, so deterministic DDIM with the
    # exact denoiser must map the initial noise x_T to MU + S z_T, sample by sample.
    d = Diffusion(1000, schedule, prediction)
    x_T = torch.randn(64, 1, 8, 8, generator=torch.Generator().manual_seed(0),
                      dtype=torch.float64)
    a_T = d.alphas_cumprod[-1].item()
    z_T = (x_T - a_T ** 0.5 * MU) / (a_T * S ** 2 + 1 - a_T) ** 0.5
    out = ddim_sample(GaussianDenoiser(d), torch.zeros_like(x_T), d, 1000, 0.0, 1.0, x_T=x_T)
    torch.testing.assert_close(out, MU + S * z_T, atol=0.01, rtol=0)
    # with fewer steps the map is still linear and close to it
    out = ddim_sample(GaussianDenoiser(d), torch.zeros_like(x_T), d, 100, 0.0, 1.0, x_T=x_T)
    assert (out - (MU + S * z_T)).abs().max() < 0.15 * S


@pytest.mark.parametrize("sampler", ["ddpm", "ddim_eta1"])
@pytest.mark.parametrize("prediction", ["eps", "v"])
def test_ancestral_samples_of_gaussian_data_have_its_distribution(sampler, prediction):
    # DDPM's posterior q(x_{t-1} | x_t, x0_hat) with the exact denoiser (and DDIM with eta = 1,
    # which has the same variances) draws from N(MU, S^2) up to a small discretisation error.
    d = Diffusion(1000, "cosine", prediction)
    cond = torch.zeros(256, 1, 8, 8, dtype=torch.float64)  # 16,384 independent samples
    g = torch.Generator().manual_seed(1)
    net = GaussianDenoiser(d)
    out = ddpm_sample(net, cond, d, 1000, 1.0, generator=g) if sampler == "ddpm" else \
        ddim_sample(net, cond, d, 1000, 1.0, 1.0, generator=g)
    assert abs(out.mean().item() - MU) < 0.02
    assert abs(out.std().item() / S - 1) < 0.02
    # and the samples are not the deterministic map of the initial noise: fresh noise each step
    again = ddpm_sample(net, cond, d, 1000, 1.0, generator=torch.Generator().manual_seed(2)) \
        if sampler == "ddpm" else ddim_sample(net, cond, d, 1000, 1.0, 1.0,
                                              generator=torch.Generator().manual_seed(2))
    assert (out - again).abs().mean() > 0.1 * S


@pytest.mark.parametrize("sampler", ["ddpm", "ddim_eta1", "ddim"])
@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
def test_every_step_of_gaussian_data_has_the_right_conditional_law(sampler, prediction):
    # Each step of 10 strided steps from x_t to x_s, observed through the states the network
    # is called with. For Gaussian data E[x_s | x_t] is the regression of x_s on x_t under the
    # joint law: slope Cov(x_s, x_t) / Var(x_t) with Cov = sqrt(a_s a_t) S^2 + sqrt(a_t / a_s)
    # (1 - a_s). DDPM's step (and DDIM's with eta = 1) has that mean, since its posterior mean is
    # linear in x0 and the network returns E[x0 | x_t], and the residual variance of the
    # posterior q(x_s | x_t, x0): (1 - a_s) / (1 - a_t) (1 - a_t / a_s). DDIM with eta = 0 is
    # deterministic and keeps the standard score: slope (sqrt(a_s a_t) S^2 +
    # sqrt((1 - a_s)(1 - a_t))) / Var(x_t), no residual.
    d = Diffusion(1000, "cosine", prediction)
    net = GaussianDenoiser(d)
    cond = torch.zeros(256, 1, 8, 8, dtype=torch.float64)  # 16,384 independent samples
    g = torch.Generator().manual_seed(3)
    if sampler == "ddpm":
        ddpm_sample(net, cond, d, 10, 1.0, generator=g)
    else:
        ddim_sample(net, cond, d, 10, 1.0 if sampler == "ddim_eta1" else 0.0, 1.0,
                    generator=g)
    abar = d.alphas_cumprod
    assert len(net.states) == 10
    for (t, x_t), (s_, x_s) in zip(net.states, net.states[1:]):
        a_t, a_s = abar[t].item(), abar[s_].item()
        x_t, x_s = x_t.flatten(), x_s.flatten()
        var_t = a_t * S ** 2 + 1 - a_t
        if sampler == "ddim":
            slope, resid = ((a_s * a_t) ** 0.5 * S ** 2 + ((1 - a_s) * (1 - a_t)) ** 0.5) / var_t, 0
        else:
            slope = ((a_s * a_t) ** 0.5 * S ** 2 + (a_t / a_s) ** 0.5 * (1 - a_s)) / var_t
            resid = (1 - a_s) / (1 - a_t) * (1 - a_t / a_s)
        mean = a_s ** 0.5 * MU + slope * (x_t - a_t ** 0.5 * MU)  # E[x_s | x_t]
        r = x_s - mean
        msg = f"{sampler} {prediction} step {t} -> {s_}"
        assert abs(r.mean().item()) < 4 * r.std().item() / len(r) ** 0.5 + 1e-9, msg
        fit = torch.dot(r - r.mean(), x_t - x_t.mean()) / torch.dot(x_t - x_t.mean(),
                                                                     x_t - x_t.mean())
        se = r.std().item() / (x_t.std().item() * len(x_t) ** 0.5)  # standard error of the fit
        assert abs(fit.item()) < 4 * se + 0.01 * slope + 1e-9, msg  # no slope left: it is right
        if resid == 0:
            assert r.abs().max() < 1e-9, msg
        else:
            assert abs(r.var().item() / resid - 1) < 0.05, msg


# ---------------------------------------------------------------- bridge and regression
def test_bridge_runs_from_the_rainy_input_to_the_target():
    from diffusion import Bridge
    b = Bridge(1000, noise=0.1, end=0.0, parametrisation="x0")
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(4, 6, 8, 8, generator=g, dtype=torch.float64)
    start = torch.randn(4, 6, 8, 8, generator=g, dtype=torch.float64)
    noise = torch.randn(4, 6, 8, 8, generator=g, dtype=torch.float64)
    end = torch.full((4,), 999)
    torch.testing.assert_close(b.train_input(x0, start, end, noise), start)  # s = 1: the rain
    near = b.train_input(x0, start, torch.zeros(4, dtype=torch.long), noise)
    assert (near - x0).abs().max() < 0.02 * (start - x0).abs().max() + 0.01  # s = 1/T
    seen = []

    class Oracle(torch.nn.Module):  # knows x0; records where the sampler asks
        def forward(self, x, t, cond):
            seen.append(x.clone())
            return x0
    out = b.sample(Oracle(), torch.zeros_like(x0), start, "ddim", 4, 0.0, 1.0)
    torch.testing.assert_close(out, x0)
    assert len(seen) == 4 and torch.equal(seen[0], start)  # it starts at the rainy input
    # with an exact x0 the deterministic path is the straight line from start to x0
    for x in seen[1:]:
        r = (x - x0) / (start - x0)
        assert r.std() < 1e-9 and 0 < r.mean() < 1


def test_bridge_own_states_are_what_the_samplers_second_step_sees():
    from diffusion import Bridge, _timesteps
    g = torch.Generator().manual_seed(3)
    x0, start, cond, noise = (torch.randn(4, 2, 4, 4, generator=g, dtype=torch.float64)
                              for _ in range(4))
    w = torch.randn(2, 4, 4, generator=g, dtype=torch.float64)
    calls = []

    def net(x, t, c):  # a fixed non-linear function of all three inputs; records its batches
        calls.append((x.clone(), t.clone()))
        return torch.tanh(x * w + c) + t.view(-1, 1, 1, 1) / 1000
    b = Bridge(100, noise=0.1, end=0.0, parametrisation="x0", states="own")
    t = torch.tensor([99, 60, 30, 99])
    x_t = b.train_input(x0, start, t, noise)
    own = b.own_states(net, x_t, start, t, cond)
    assert len(calls) == 1 and calls[0][0].shape[0] == 2  # on the CPU: the two draws below the end
    assert torch.equal(calls[0][1], torch.tensor([99, 99]))  # ...asked at the rainy end
    assert torch.equal(own[[0, 3]], x_t[[0, 3]])  # the rainy end is untouched
    first = net(start, torch.full((4,), 99), cond)  # the sampler's first estimate
    for i in (1, 2):
        s = (t[i] + 1) / 100
        torch.testing.assert_close(own[i], (1 - s) * first[i] + s * start[i])
    # the whole-batch path and the host's rows (an accelerator's) give the same states; rows
    # may hold a draw at the end (a uniform draw there), which is rebuilt as itself
    calls.clear()
    torch.testing.assert_close(b.own_states(net, x_t, start, t, cond, select="all"), own)
    rows = torch.tensor([1, 2, 3])
    torch.testing.assert_close(b.own_states(net, x_t, start, t, cond, rows, select="rows"), own)
    assert [c[0].shape[0] for c in calls] == [4, 3]
    assert b.own_states(net, x_t, start, t, cond, rows[:0], select="rows") is x_t
    with pytest.raises(ValueError, match="select"):
        b.own_states(net, x_t, start, t, cond, select=False)
    # and they are exactly the deterministic sampler's second state
    calls.clear()
    b.sample(net, cond, start, "ddim", 2, 0.0, 1.0)
    t2 = torch.full((4,), _timesteps(b, 2)[1])
    torch.testing.assert_close(calls[1][0], b.own_states(net, b.train_input(x0, start, t2, noise),
                                                         start, t2, cond))
    # and with the skip parametrisation the first estimate is still the network's output at T-1
    skip = Bridge(100, noise=0.1, end=0.0, parametrisation="skip", states="own")
    torch.testing.assert_close(skip.own_states(net, x_t, start, t, cond), own)
    # the textbook states are the default; a name that is not a choice is refused
    assert Bridge(100, 0.1, 0.0, "x0").states == "clean"
    with pytest.raises(ValueError, match="bridge-states"):
        Bridge(100, 0.1, 0.0, "x0", states="sampled")


def test_the_own_states_loss_trains_on_them():
    """--bridge-states own reaches the training loss: the network's training input below the
    rainy end is the own state, built from its estimate at T-1."""
    from diffusion import make_process
    from losses import make_loss
    import representations
    from ddpm_conditional import launch
    cfg = {**launch(), "process": "bridge", "timesteps": 10, "bridge_end": 0.0,
           "bridge_param": "x0", "bridge_states": "own", "loss": "image", "p_uncond": 0.0}
    rep = representations.make("pixels", 4, False, target="clean")  # start: the rain, not 0
    proc = make_process(cfg, rep)
    loss = make_loss(cfg, proc, rep)
    g = torch.Generator().manual_seed(0)
    clean, rain = torch.rand(3, 3, 4, 4, generator=g), torch.rand(3, 3, 4, 4, generator=g)
    x0, cond = rep.encode(clean, rain)
    seen = []

    def net(x, t, c):
        seen.append((x.clone(), t.clone()))
        return 0.5 * x
    gen = torch.Generator().manual_seed(1)
    loss(net, {"target": x0, "cond": cond, "clean": clean, "rain": rain}, gen)
    (x_first, t_first), (x_t, t) = seen
    assert (t_first == 9).all() and (t < 9).any()
    start = rep.encode(rain, rain)[0]
    s = ((t + 1) / 10).view(-1, 1, 1, 1)
    below = t < 9
    expected = (1 - s) * 0.5 * start + s * start
    torch.testing.assert_close(x_t[below], expected[below])


def test_bridge_end_puts_that_fraction_of_the_draws_at_the_rainy_end():
    from diffusion import Bridge, draw_t_and_noise, make_process
    x0 = torch.zeros(4000, 1, 2, 2)
    base_t, base_noise = Bridge(1000, 0.1, 0.0, "x0").draw(x0, torch.Generator().manual_seed(3))
    t, noise = Bridge(1000, 0.1, 0.25, "x0").draw(x0, torch.Generator().manual_seed(3))
    assert torch.equal(noise, base_noise)  # the same noise; only t changes
    moved = t != base_t
    assert torch.equal(t[moved], torch.full_like(t[moved], 999))
    frac = (t == 999).double().mean().item()  # 0.25 + 0.75 / 1000 expected
    assert abs(frac - 0.25075) < 4 * (0.25 * 0.75 / 4000) ** 0.5
    # the share the process reports (tools/loss_by_t.py prints it) is the one it draws
    for b, tt in ((Bridge(1000, 0.1, 0.25, "x0"), t), (Bridge(1000, 0.1, 0.0, "x0"), base_t)):
        for at in (999, 900, 500, 0):
            share = (tt >= at).double().mean().item()
            assert abs(b.share_at_or_above(at) - share) < 4 * (0.25 / 4000) ** 0.5
    assert Bridge(1000, 0.1, 0.25, "x0").share_at_or_above(999) == pytest.approx(0.25075)
    assert Bridge(1000, 0.1, 0.25, "x0").share_at_or_above(0) == 1.0
    # per-sample generators (the training loop's): a sample's draw does not depend on its batch
    from helpers.seeding import SampleGenerators
    t6, n6 = Bridge(1000, 0.1, 0.5, "x0").draw(x0[:6], SampleGenerators(range(6), "cpu"))
    t3, n3 = Bridge(1000, 0.1, 0.5, "x0").draw(x0[:3], SampleGenerators(range(3), "cpu"))
    assert torch.equal(t6[:3], t3) and torch.equal(n6[:3], n3)
    # and sample i's draws are those of a generator seeded with its seed, in the order t, noise,
    # the end's uniform draw
    g = torch.Generator().manual_seed(4)
    t_4 = torch.randint(0, 1000, (1,), generator=g)
    noise_4 = torch.randn(x0.shape[1:], generator=g)
    u_4 = torch.rand(1, generator=g)
    assert torch.equal(n6[4], noise_4)
    assert t6[4] == (999 if u_4 < 0.5 else t_4)
    # on an accelerator the end's draws come from the host, so the host knows the rows the own
    # states rebuild: the draws not sent to the end, each sample's from random.Random(its seed)
    import random
    gens = SampleGenerators(range(4000), "cpu")
    th, nh, rows = Bridge(1000, 0.1, 0.25, "x0").draw_rows(x0, gens, host=True)
    tb, nb = draw_t_and_noise(x0, 1000, SampleGenerators(range(4000), "cpu"))
    assert torch.equal(nh, nb)  # the same noise and uniform t; only the end's draws moved
    kept = [i for i in range(4000) if random.Random(i).random() >= 0.25]
    assert rows.tolist() == kept and torch.equal(th[rows], tb[rows])
    ends = torch.ones(4000, dtype=torch.bool)
    ends[rows] = False
    assert (th[ends] == 999).all()
    assert abs(ends.double().mean().item() - 0.25) < 4 * (0.25 * 0.75 / 4000) ** 0.5
    # on the CPU rows is None (own_states reads t) and the draws are draw()'s
    t_cpu, n_cpu, none = Bridge(1000, 0.1, 0.5, "x0").draw_rows(x0[:6],
                                                                SampleGenerators(range(6), "cpu"))
    assert none is None and torch.equal(t_cpu, t6) and torch.equal(n_cpu, n6)
    cfg = {"process": "bridge", "timesteps": 1000, "bridge_noise": 0.1, "bridge_end": 0.3,
           "bridge_param": "x0", "bridge_states": "clean"}
    assert make_process(cfg, None).end == 0.3
    assert make_process({**cfg, "bridge_end": 0.0}, None).end == 0
    with pytest.raises(ValueError, match="bridge-end"):
        Bridge(1000, 0.1, 1.5, "x0")


def test_bridge_noiseless_x0_inverts_a_noise_free_state_and_refuses_the_rainy_end():
    from diffusion import Bridge
    g = torch.Generator().manual_seed(0)
    x0, start = torch.randn(3, 2, 4, 4, generator=g), torch.randn(3, 2, 4, 4, generator=g)
    b = Bridge(100, noise=0.0, end=0.0, parametrisation="x0")
    t = torch.tensor([0, 50, 98])
    x_t = b.train_input(x0, start, t, torch.randn(x0.shape, generator=g))
    torch.testing.assert_close(b.noiseless_x0(x_t, start, t), x0)
    assert torch.equal(b.start_weight(t, x0).flatten(), (t + 1) / 100)
    assert b.noiseless_x0(x_t, start, torch.tensor([0, 50, 99])) is None  # x_{T-1} = start
    noisy = Bridge(100, noise=0.1, end=0.0, parametrisation="x0")  # with noise the inversion is off by sigma / (1 - s) eps
    x_t = noisy.train_input(x0, start, t, torch.ones_like(x0))
    err = noisy.noiseless_x0(x_t, start, t) - x0
    s = (t + 1).double() / 100
    expected = 0.1 * (s * (1 - s)).sqrt() / (1 - s)
    torch.testing.assert_close(err.amax(dim=(1, 2, 3)).double(), expected, rtol=1e-5, atol=1e-6)


def test_regression_is_one_pass_from_the_rainy_input():
    from diffusion import Regression
    calls = []

    def net(x, t, cond):
        calls.append((x, t))
        return x + 1
    start = torch.zeros(2, 6, 4, 4)
    out = Regression().sample(net, torch.zeros_like(start), start, "ddim", 20, 0.0, 1.0)
    assert len(calls) == 1 and torch.equal(calls[0][1], torch.zeros(2, dtype=torch.long))
    torch.testing.assert_close(out, start + 1)


def test_a_frequency_schedule_noises_low_frequencies_last():
    import numpy as np

    import representations
    from diffusion import frequency_exponent
    rep = representations.make_transform("realimag", 16, True)
    exp = frequency_exponent(rep, 0.5)
    assert exp.shape == (1, 16, 16) and exp[0, 8, 8] == 0.5 and exp.max() <= 1
    d = Diffusion(1000, "cosine", "x0", exponent=exp)
    x0 = torch.ones(2, 6, 16, 16, dtype=torch.float64)
    a = d._abar(torch.tensor([500, 500]), x0)  # (2, 1, 16, 16)
    assert a[0, 0, 8, 8] > a[0, 0, 0, 0]  # the zero frequency keeps more signal
    plain = Diffusion(1000, "cosine", "x0")._abar(torch.tensor([500]), x0).item()
    assert a[0, 0, 8, 8].item() == pytest.approx(plain ** 0.5)
    # the samplers work elementwise: the oracle still gives its answer back
    out = ddim_sample(Oracle(d, x0), torch.zeros_like(x0), d, 5, 0.0, 1.0)
    torch.testing.assert_close(out, x0, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="frequency coordinates"):
        frequency_exponent(representations.make_transform("pixels", 16, False), 0.5)
    assert np.isfinite(exp.numpy()).all()


def test_the_skip_parametrisation_is_the_inversion_plus_a_correction_weighted_by_s():
    from diffusion import Bridge
    g = torch.Generator().manual_seed(0)
    x0, start, eps = (torch.randn(3, 2, 4, 4, generator=g, dtype=torch.float64) for _ in "abc")
    b = Bridge(1000, 0.1, 0.9, "skip")
    t = torch.tensor([999, 500, 0])
    x_t = b.train_input(x0, start, t, eps)
    out = torch.randn(3, 2, 4, 4, generator=g, dtype=torch.float64)
    est = b.x0_estimate(out, x_t, t, start)
    torch.testing.assert_close(est[0], out[0])  # at the rainy end it is the network's answer
    s = b.start_weight(t, x_t)
    torch.testing.assert_close(est, x_t - s * start + s * out)
    inv = b.noiseless_x0(x_t[1:], start[1:], t[1:])  # = (1 - s) inv + s out where s < 1
    torch.testing.assert_close(est[1:], (1 - s[1:]) * inv + s[1:] * out[1:])
    assert (est[2] - x0[2]).abs().max() < 0.01 + 0.001 * out[2].abs().max()  # s = 1/T: ~x_t
    # sampling: with the network that outputs the F making the estimate exact, every step's
    # estimate is x0, from the rainy start to the end
    seen = []

    class Exact(torch.nn.Module):
        def forward(self, x, tt, cond):
            ss = b.start_weight(tt, x)
            f = (x0 - x + ss * start) / ss
            seen.append(b.x0_estimate(f, x, tt, start))
            return f
    got = b.sample(Exact(), torch.zeros_like(x0), start, "ddim", 4, 0.0, 1.0)
    torch.testing.assert_close(got, x0)
    assert len(seen) == 4 and all(torch.allclose(e, x0) for e in seen)
    with pytest.raises(ValueError, match="bridge-param"):
        Bridge(1000, 0.1, 0.9, "eps")
