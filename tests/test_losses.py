"""The loss objects of losses.py: what each measures, condition dropout, and the draws."""
import numpy as np
import pytest
import torch

import representations
from diffusion import Diffusion
from helpers.errors import ConfigError
from losses import (IMAGE_UNIT, LOSSES, ImageFFTLoss, ImageLoss, MixLoss, ModelLoss, PSNRLoss,
                    make_loss)
from tests.helpers_data import make_rep


def _rep(crop=8, name="realimag", log=True):
    rep = make_rep(name, "diff", "perfreq_std", crop, log)
    if not rep.needs_statistics:
        return rep
    shape = rep.shape(crop, crop)
    rng = np.random.default_rng(0)
    lo = -1 - rng.random(shape)
    hi = 1 + rng.random(shape)
    return make_rep(name, "diff", "perfreq_std", crop, log,
                                {"ranges": {"target": (lo, hi), "cond": (lo, hi)}})


def _batch(rep, b=4, crop=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    clean = torch.rand(b, 3, crop, crop, generator=g, dtype=torch.float64)
    rain = (clean + 0.3 * (torch.rand(b, 3, crop, crop, generator=g) < 0.1)).clamp(0, 1)
    target, cond = rep.encode(clean, rain)
    return {"target": target.float(), "cond": cond.float(), "rain": rain.float(),
            "clean": clean.float()}


class Fixed(torch.nn.Module):
    """Returns a fixed prediction (a parameter, so gradients can be checked)."""

    def __init__(self, shape, seed=1):
        super().__init__()
        self.out = torch.nn.Parameter(torch.randn(shape, generator=torch.Generator()
                                                  .manual_seed(seed)))
        self.seen = []

    def forward(self, x, t, cond):
        self.seen.append((x, t, cond))
        return self.out


def test_model_loss_is_the_mse_of_the_prediction_target():
    rep, d = _rep(), Diffusion(1000, "cosine", "v")
    batch = _batch(rep)
    net = Fixed(batch["target"].shape)
    loss = ModelLoss(d, rep, 0.0, 0)(net, batch, torch.Generator().manual_seed(5))
    # the same draws, in the documented order: t, then the noise
    g = torch.Generator().manual_seed(5)
    t = torch.randint(0, 1000, (4,), generator=g)
    noise = torch.randn(batch["target"].shape, generator=g)
    torch.testing.assert_close(net.seen[0][1], t)
    torch.testing.assert_close(net.seen[0][0], d.q_sample(batch["target"], t, noise))
    torch.testing.assert_close(loss, (net.out - d.target_for(batch["target"], t, noise)) ** 2)


@pytest.mark.parametrize("name", representations.names())
def test_image_loss_measures_the_decoded_x0_estimate_against_the_clean_window(name):
    rep, d = _rep(name=name), Diffusion(1000, "cosine", "x0")
    batch = _batch(rep)
    # a perfect x0 prediction costs nothing in image space...
    exact = Fixed(batch["target"].shape)
    exact.out.data = batch["target"].clone()
    assert ImageLoss(d, rep, 0.0, 0)(exact, batch).max() < 1e-8
    # ...and any other is the squared image error of its decoding, in units of IMAGE_UNIT^2
    net = Fixed(batch["target"].shape)
    loss = ImageLoss(d, rep, 0.0, 0)(net, batch)
    image = rep.decode(net.out.detach().double(), batch["rain"].double())
    expected = (image - batch["clean"].double()) ** 2 / IMAGE_UNIT ** 2
    assert loss.shape == batch["clean"].shape
    torch.testing.assert_close(loss.double(), expected, rtol=1e-3, atol=1e-4)  # float32
    loss.mean().backward()
    assert torch.isfinite(net.out.grad).all() and net.out.grad.abs().sum() > 0


def test_image_loss_of_the_linear_spectrum_weighs_frequencies_by_their_image_cost():
    # linear realimag: a unit error at frequency f costs its half-range (hi - lo) / 2 in the
    # orthonormal spectrum, so (Parseval) high-variance frequencies cost more image MSE
    rep, d = _rep(log=False), Diffusion(1000, "cosine", "x0")
    batch = _batch(rep)
    lo, hi = rep.ranges["target"]
    span = (hi - lo) / 2
    costs = []
    for pos in (np.unravel_index(np.argmax(span[0]), span[0].shape),
                np.unravel_index(np.argmin(span[0]), span[0].shape)):
        net = Fixed(batch["target"].shape)
        net.out.data = batch["target"].clone()
        net.out.data[:, 0, pos[0], pos[1]] += 1.0
        costs.append(ImageLoss(d, rep, 0.0, 0)(net, batch).mean().item())
    assert costs[0] > costs[1] * (span[0].max() / span[0].min()) ** 2 * 0.5


def test_mix_loss_is_the_weighted_sum_of_its_parts():
    rep, d = _rep(), Diffusion(1000, "cosine", "eps")
    batch = _batch(rep)
    net = Fixed(batch["target"].shape)
    parts = [cls(d, rep, 0.0, 0)(net, batch, torch.Generator().manual_seed(2)).mean().item()
             for cls in (ModelLoss, ImageLoss)]
    mix = MixLoss(d, rep, 0.0, 0, mix=0.3)(net, batch, torch.Generator().manual_seed(2)).mean().item()
    assert mix == pytest.approx(0.7 * parts[0] + 0.3 * parts[1], rel=1e-5)


def test_condition_dropout_zeroes_the_condition():
    rep, d = _rep(), Diffusion(1000, "cosine", "v")
    batch = _batch(rep, b=200)
    net = Fixed(batch["target"].shape)
    ModelLoss(d, rep, 0.3, 0)(net, batch, torch.Generator().manual_seed(0))
    dropped = (net.seen[0][2].abs().sum(dim=(1, 2, 3)) == 0).float().mean().item()
    assert 0.2 < dropped < 0.4


def test_losses_are_chosen_by_name():
    rep, d = _rep(), Diffusion(1000, "cosine", "v")
    cfg = {"loss": "mix", "loss_mix": 0.25, "p_uncond": 0.1, "seed": 3,
           "fft_loss_weight": 0.2, "fft_loss_scales": 2, "psnr_floor": 1e-4}
    loss = make_loss(cfg, d, rep)
    assert isinstance(loss, MixLoss) and loss.mix == 0.25 and loss.p_uncond == 0.1
    loss = make_loss({**cfg, "loss": "image_fft"}, d, rep)
    assert isinstance(loss, ImageFFTLoss) and (loss.weight, loss.scales) == (0.2, 2)
    assert set(LOSSES) == {"model", "image", "mix", "image_fft", "psnr"}
    loss = make_loss({**cfg, "loss": "psnr"}, d, rep)
    assert isinstance(loss, PSNRLoss) and loss.floor == 1e-4
    with pytest.raises(ValueError, match="unknown loss"):
        make_loss({**cfg, "loss": "l1"}, d, rep)
    from diffusion import Bridge  # a skip-parametrised bridge has no x0 output to compare with
    with pytest.raises(ValueError, match="image loss"):
        make_loss({**cfg, "loss": "model"}, Bridge(1000, 0.1, 0.9, "skip"), rep)


@pytest.mark.parametrize("scales", [1, 3])
def test_the_frequency_loss_adds_the_spectrum_l1_at_each_scale(scales):
    import torch.nn.functional as F
    rep, d = _rep(log=False), Diffusion(1000, "cosine", "x0")
    batch = _batch(rep, crop=8)
    net = Fixed(batch["target"].shape)
    got = ImageFFTLoss(d, rep, 0.0, 0, 0.3, scales)(net, batch).mean()
    image, clean = rep.decode(net.out.detach(), batch["rain"]), batch["clean"]
    expected = ((image - clean) ** 2).mean() / IMAGE_UNIT ** 2
    for k in range(scales):
        a, b = F.avg_pool2d(image, 2 ** k), F.avg_pool2d(clean, 2 ** k)
        spec = torch.fft.rfft2(a - b, norm="ortho")
        expected += 0.3 * torch.cat([spec.real.abs(), spec.imag.abs()]).mean() / IMAGE_UNIT
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    # and a perfect estimate costs nothing
    exact = Fixed(batch["target"].shape)
    exact.out.data = batch["target"].clone()
    assert ImageFFTLoss(d, rep, 0.0, 0, 0.3, scales)(exact, batch).max() < 1e-4  # float32


def test_the_default_process_bridge_feeds_the_network_a_point_between_rain_and_target():
    # the default: a bridge from the rainy input; the loss encodes the pair (rain, rain) as the
    # start, draws (t, noise) and the end share per sample from the sample's position, and
    # measures the decoded x0 estimate in image space
    from diffusion import Bridge
    from helpers.seeding import SampleGenerators, hash_seed
    rep = _rep(log=False)
    batch = {**_batch(rep), "position": torch.arange(10, 14)}
    net = Fixed(batch["target"].shape)
    b = Bridge(1000, 0.1, 0.5, "x0")
    loss = ImageLoss(b, rep, 0.0, 7)(net, batch)
    x_t, t, _ = net.seen[0]
    start = rep.encode(batch["rain"], batch["rain"])[0]
    noise = SampleGenerators([hash_seed("noise", 7, p) for p in range(10, 14)], "cpu")
    t_ref, eps = b.draw(batch["target"], noise)
    assert torch.equal(t, t_ref)
    torch.testing.assert_close(x_t, b.train_input(batch["target"], start, t_ref, eps))
    image = rep.decode(net.out.detach(), batch["rain"])  # the bridge's x0 is the output itself
    torch.testing.assert_close(loss, (image - batch["clean"]) ** 2 / IMAGE_UNIT ** 2)
    # at the rainy end (t = T-1) the network sees the rain's own encoding: zero change
    net = Fixed(batch["target"].shape)
    ImageLoss(Bridge(1000, 0.1, 1.0, "x0"), rep, 0.0, 7)(net, batch)
    x_t, t, _ = net.seen[0]
    assert torch.equal(t, torch.full_like(t, 999))
    torch.testing.assert_close(x_t, start)
    assert x_t.abs().max() > 0  # a real encoding: the normalised zero change is not zero


def test_the_psnr_loss_is_each_windows_negative_psnr():
    rep, d = _rep(log=False), Diffusion(1000, "cosine", "x0")
    batch = _batch(rep)
    net = Fixed(batch["target"].shape)
    loss = PSNRLoss(d, rep, 0.0, 0)(net, batch)
    image = rep.decode(net.out.detach().double(), batch["rain"].double())
    mse = ((image - batch["clean"].double()) ** 2).flatten(1).mean(1)
    assert loss.shape == (4, 1)
    torch.testing.assert_close(loss[:, 0].double(), 10 * torch.log10(mse + 1e-6),
                               rtol=1e-4, atol=1e-4)
    # a near-exact window is held at the floor (60 dB), not driven to -inf
    exact = Fixed(batch["target"].shape)
    exact.out.data = batch["target"].clone()
    assert PSNRLoss(d, rep, 0.0, 0)(exact, batch).min() > -60.5


def _two_windows():
    """Two windows whose x0 estimates are off by noise, the second with about 10x less MSE:
    -> (representation, process, batch, net, each window's image-space MSE)."""
    rep, d = _rep(log=False), Diffusion(1000, "cosine", "x0")
    batch = _batch(rep, b=2)
    net = Fixed(batch["target"].shape)
    net.out.data = batch["target"].clone()
    net.out.data[0] += 0.1 * torch.randn_like(net.out.data[0])
    net.out.data[1] += 0.1 * 10 ** -0.5 * torch.randn_like(net.out.data[1])  # 10x less MSE
    image = rep.decode(net.out.detach().double(), batch["rain"].double())
    mse = ((image - batch["clean"].double()) ** 2).flatten(1).mean(1)
    return rep, d, batch, net, mse


def _weight_ratio(net, batch, loss):
    """Window 1's gradient per unit of its error over window 0's, for a per-window loss."""
    net.out.grad = None
    loss.mean().backward()
    err = (net.out.detach() - batch["target"]).flatten(1).norm(dim=1)
    g = net.out.grad.flatten(1).norm(dim=1) / err
    return float(g[1] / g[0])


def test_the_psnr_loss_weighs_each_window_by_the_inverse_of_its_error():
    # the image loss's gradient on a window is proportional to its error; the PSNR loss's to its
    # error over its MSE: a window 10x closer in MSE gets 10x the weight per unit of error
    rep, d, batch, net, mse = _two_windows()
    assert mse[0] / mse[1] > 5
    ratio_image = _weight_ratio(net, batch, ImageLoss(d, rep, 0.0, 0)(net, batch))
    ratio_psnr = _weight_ratio(net, batch, PSNRLoss(d, rep, 0.0, 0)(net, batch))
    assert ratio_image == pytest.approx(1.0, rel=0.1)
    assert ratio_psnr == pytest.approx(ratio_image * float(mse[0] / mse[1]), rel=0.01)


def test_the_psnr_floor_moves_the_weighting_towards_the_image_loss():
    # log(MSE + floor): a window's squared error is weighted by 1 / (its MSE + floor), so a
    # floor above both windows' MSEs weights them almost alike, as the image MSE does
    rep, d, batch, net, mse = _two_windows()
    image_ratio = _weight_ratio(net, batch, ImageLoss(d, rep, 0.0, 0)(net, batch))
    ratios = {}
    for floor in (1e-6, float(mse.max()), 100 * float(mse.max())):
        loss = PSNRLoss(d, rep, 0.0, 0, floor=floor)(net, batch)
        torch.testing.assert_close(loss[:, 0].double(), 10 * torch.log10(mse + floor),
                                   rtol=1e-4, atol=1e-4)
        ratios[floor] = _weight_ratio(net, batch, loss) / image_ratio  # relative to the image MSE's
        want = float((mse[0] + floor) / (mse[1] + floor))
        assert ratios[floor] == pytest.approx(want, rel=0.01)
    r = list(ratios.values())
    assert r[0] > 5 and r[0] > r[1] > r[2] and r[2] == pytest.approx(1.0, abs=0.05)
    with pytest.raises(ConfigError, match="--psnr-floor must be > 0"):
        PSNRLoss(d, rep, 0.0, 0, floor=0.0)


def test_a_loss_on_x0_with_the_skip_bridge_says_what_to_use_instead():
    # the default bridge outputs a correction, not x0; --loss model / mix would compare it with x0
    import ddpm_conditional as D
    from diffusion import make_process
    from losses import make_loss
    for name in ("model", "mix"):
        cfg, _ = D.resolve_config(["--loss", name])
        with pytest.raises(ConfigError, match="use an image loss .* or add --bridge-param x0"):
            make_loss(cfg, make_process(cfg, None), None)
        cfg, _ = D.resolve_config(["--loss", name, "--bridge-param", "x0"])
        assert type(make_loss(cfg, make_process(cfg, None), None)).__name__ in ("ModelLoss",
                                                                                  "MixLoss")
