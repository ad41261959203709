"""Tests of modules: UNet_conditional's shapes at any size, gradient flow, time conditioning,
config round trip, attention placement and the presets; the Denoiser wrapper's frequency
coordinates. Tiny configs only, so the whole file runs in a few seconds on a CPU."""
import json

import pytest
import torch
import torch.nn.functional as F

from helpers import process as P
from modules import MODEL_PRESETS, AttnBlock, Denoiser, UNet_conditional, build_network, count_parameters
from representations.pixels import Pixels
from representations.realimag import RealImag

# Two downsamples (sizes padded to multiples of 4), attention only at the 1/4-resolution level.
TINY = dict(in_channels=6, cond_channels=6, out_channels=6, base_channels=16,
            channel_mults=(1, 2, 2), num_res_blocks=1, attn_levels=(2,), attn_heads=2, groups=4)


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny tensors gain nothing from threads, and on a shared machine two threads contending
    with other processes can be many times slower than one."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def make(seed=0, randomise_out=True, freq_coords=False, **kw):
    """A tiny model; the zero-initialised output conv is randomised so outputs and gradients are
    informative (with it at zero the output is identically 0 and only it gets a gradient). With
    freq_coords, the U-Net inside a Denoiser that appends a spectrum's frequency coordinates."""
    torch.manual_seed(seed)
    if freq_coords:
        kw["cond_channels"] = kw.get("cond_channels", 6) + 3
    unet = UNet_conditional(**{**TINY, **kw}).eval()
    if randomise_out:
        with torch.no_grad():
            unet.conv_out.weight.normal_(0, 0.1)
            unet.conv_out.bias.normal_(0, 0.1)
    return Denoiser(unet, RealImag(64, True)).eval() if freq_coords else unet


def inputs(b, h, w, c=6, seed=1):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(b, c, h, w, generator=g), torch.randint(0, 1000, (b,), generator=g),
            torch.randn(b, c, h, w, generator=g))


@pytest.mark.parametrize("b,h,w", [(1, 64, 64), (2, 33, 47), (2, 20, 100), (1, 7, 5), (2, 1, 1)])
def test_output_shape_any_size(b, h, w):
    m = make()
    x, t, c = inputs(b, h, w)
    with torch.no_grad():
        y = m(x, t, c)
    assert y.shape == (b, 6, h, w)
    assert torch.isfinite(y).all()


def test_pixel_baseline_shape_and_zero_init():
    """3-channel pixel model without coordinates; a fresh model outputs exactly 0 (zero-init)."""
    m = make(randomise_out=False, in_channels=3, cond_channels=3, out_channels=3)
    assert m.conv_in.in_channels == 6
    x, t, c = inputs(2, 33, 47, c=3)
    with torch.no_grad():
        y = m(x, t, c)
    assert y.shape == (2, 3, 33, 47)
    assert torch.count_nonzero(y) == 0


def test_gradients_reach_every_parameter():
    m = make().train()
    x, t, c = inputs(2, 24, 20)
    loss = F.mse_loss(m(x, t, c), torch.randn(2, 6, 24, 20))
    loss.backward()
    dead = [n for n, p in m.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not dead, f"parameters without gradient: {dead}"


def test_freq_coords_use_unpadded_size_and_reach_the_output(monkeypatch):
    m = make(freq_coords=True)
    x, t, c = inputs(1, 33, 47)
    calls = []
    real = P.centred_freq_coords

    def spy(h, w, **kw):
        calls.append((h, w))
        return real(h, w, **kw)

    monkeypatch.setattr(P, "centred_freq_coords", spy)
    with torch.no_grad():
        y = m(x, t, c)
    assert calls == [(33, 47)]  # not the padded 36 x 48

    monkeypatch.setattr(P, "centred_freq_coords", lambda h, w, **kw: torch.zeros(3, h, w))
    with torch.no_grad():
        y0 = m(x, t, c)
    assert (y - y0).abs().max() > 1e-3


def test_freq_coords_break_translation_equivariance():
    """A shifted input gives a shifted output for a plain CNN (away from the borders), but not
    when the model sees where each frequency is. One level only, so the receptive field is small
    and the interior is free of border effects."""
    cfg = dict(channel_mults=(1,), attn_levels=())
    with_c = make(**cfg, freq_coords=True)
    without = make(**cfg, freq_coords=False)
    sd = with_c.trunk.state_dict()
    sd["conv_in.weight"] = sd["conv_in.weight"][:, :12]  # same weights minus the coord channels
    without.load_state_dict(sd)
    x, t, c = inputs(1, 64, 64)
    s, m = 8, 20

    def rel_err(model):
        with torch.no_grad():
            y = model(x, t, c)
            ys = model(x.roll((s, s), (2, 3)), t, c.roll((s, s), (2, 3)))
        d = (ys - y.roll((s, s), (2, 3)))[..., m:-m, m:-m]
        return (d.abs().mean() / y[..., m:-m, m:-m].abs().mean()).item()

    e_with, e_without = rel_err(with_c), rel_err(without)
    assert e_without < 0.05
    assert e_with > 5 * e_without


def test_output_depends_on_t():
    m = make()
    x, _, c = inputs(2, 16, 16)
    with torch.no_grad():
        y1 = m(x, torch.tensor([10, 10]), c)
        y2 = m(x, torch.tensor([900, 900]), c)
        y3 = m(x, torch.tensor([10.0, 10.0]), c)  # float times work and equal the int ones
        y4 = m(x, 10, c)  # a plain number is broadcast over the batch
    assert (y1 - y2).abs().max() > 1e-3
    torch.testing.assert_close(y1, y3)
    torch.testing.assert_close(y1, y4)


def test_config_round_trip_rebuilds_and_loads():
    m = make(num_res_blocks=(1, 2, 1))
    cfg = json.loads(json.dumps(m.config))  # JSON-able, as stored in a checkpoint
    assert cfg == m.config
    m2 = UNet_conditional(**cfg).eval()
    assert m2.config == m.config and str(m2) == str(m)
    m2.load_state_dict(m.state_dict())  # strict: same parameter names and shapes
    x, t, c = inputs(1, 20, 28)
    with torch.no_grad():
        torch.testing.assert_close(m2(x, t, c), m(x, t, c))


def test_no_attention_at_full_resolution(monkeypatch):
    with pytest.raises(ValueError):
        UNet_conditional(**{**TINY, "attn_levels": (0, 2)})
    m = make(attn_levels=(1, 2))
    assert not any(isinstance(mod, AttnBlock) for lv in (m.down_levels[0], m.up_levels[0])
                   for mod in lv.modules())
    assert any(isinstance(mod, AttnBlock) for mod in m.down_levels[1].modules())
    # at run time: every attention call sees at most the pixels of the 1/2-resolution map
    lengths = []
    real = F.scaled_dot_product_attention

    def spy(q, k, v, *a, **kw):
        lengths.append(q.shape[-2])
        return real(q, k, v, *a, **kw)

    monkeypatch.setattr(F, "scaled_dot_product_attention", spy)
    x, t, c = inputs(1, 32, 24)
    with torch.no_grad():
        m(x, t, c)
    assert lengths and max(lengths) == 16 * 12 and min(lengths) == 8 * 6


def test_bf16_autocast_and_channels_last():
    m = make()
    x, t, c = inputs(2, 20, 28)
    with torch.no_grad():
        ref = m(x, t, c)
        m_cl = m.to(memory_format=torch.channels_last)
        y_cl = m_cl(x.contiguous(memory_format=torch.channels_last), t,
                    c.contiguous(memory_format=torch.channels_last))
        torch.testing.assert_close(y_cl, ref, rtol=1e-4, atol=1e-4)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = m(x, t, c)
    assert y.shape == ref.shape and torch.isfinite(y).all()
    assert (y.float() - ref).abs().max() < 0.1 * ref.abs().max() + 0.05


def test_presets():
    params = {}
    for name, preset in MODEL_PRESETS.items():
        cfg = {"model": name, "model_args": {}, "freq_coords": True, "network": "unet"}
        m = build_network(cfg, RealImag(64, True))
        params[name] = count_parameters(m)
        assert m.trunk.conv_in.in_channels == 15  # 6 noisy + 6 condition + 3 frequency coords
        assert all(w % 32 == 0 for w in (preset["base_channels"] * k
                                         for k in preset["channel_mults"]))
        assert 0 not in preset["attn_levels"]
    assert params["large"] >= 20e6
    assert 1e6 <= params["small"] <= 3e6
    assert params["small"] < params["default"] < params["large"]
    # the pixel baseline uses the same presets, without extra inputs
    pixel = build_network({"model": "small", "model_args": {}, "freq_coords": True,
                           "network": "unet"}, Pixels(64, False))
    assert pixel.trunk.conv_in.in_channels == 6 and pixel.extra_inputs is None


def _spectral_rep(crop=16):
    import numpy as np
    lo, hi = -20 * np.ones((6, crop, crop)), 20 * np.ones((6, crop, crop))  # no clipping
    return RealImag(crop, False, "diff", "perfreq", None,
                    {"ranges": {"target": (lo, hi), "cond": (lo, hi)}})


def test_pixel_trunk_sees_pixels_and_returns_the_fourier_target():
    rep = _spectral_rep()
    seen = []

    class ZeroChange(torch.nn.Module):  # the trunk: records its input, predicts no change
        config = {}

        def forward(self, x, t, cond=None):
            seen.append(x)
            return torch.zeros(x.shape[0], 3, *x.shape[-2:])

    from modules import PixelTrunk
    net = PixelTrunk(ZeroChange(), rep)
    g = torch.Generator().manual_seed(0)
    clean = torch.rand(2, 3, 16, 16, generator=g, dtype=torch.float64)
    rain = (clean + 0.2 * (torch.rand(2, 3, 16, 16, generator=g) < 0.1)).clamp(0, 1)
    target, cond = rep.encode(clean, rain)
    out = net(target.float(), torch.zeros(2, dtype=torch.long), cond.float())
    change, rain_px = seen[0][:, :3], (seen[0][:, 3:] + 1) / 2
    torch.testing.assert_close(change.double(), clean - rain, atol=1e-5, rtol=0)  # the change
    torch.testing.assert_close(rain_px.double(), rain, atol=1e-5, rtol=0)  # and the rain
    zero_change = rep.encode(rain, rain)[0]  # no change predicted: x0 is the rainy image's
    torch.testing.assert_close(out.double(), zero_change, atol=1e-5, rtol=0)


def _far_sensitivity(model, channels=3):
    """How much a corner output pixel depends on the far quarter of a 32x32 input, relative to
    its own neighbourhood (gradients)."""
    x = torch.randn(1, channels, 32, 32, generator=torch.Generator().manual_seed(0),
                    requires_grad=True)
    model(x, torch.tensor([5]))[0, 0, 0, 0].backward()
    return (x.grad[0, :, 16:, 16:].abs().mean() / x.grad[0, :, :3, :3].abs().mean()).item()


def _randomise_fft(model):
    """The Res-FFT branch and its control (ResConv) start at zero (the block is its spatial
    branch); give them weights."""
    with torch.no_grad():
        for mod in model.modules():
            if type(mod).__name__ in ("ResFFT", "ResConv"):
                mod.conv2.weight.normal_(0, 0.1)
            if type(mod).__name__ == "GlobalFilter":
                mod.real.normal_(0, 0.3)
                mod.imag.normal_(0, 0.3)


@pytest.mark.parametrize("branch", ["ffc", "res_fft"])
def test_fourier_branches_see_the_whole_map(branch):
    # one level, no attention: a plain 3x3 U-Net's output at a pixel hardly depends on far
    # pixels (only through GroupNorm's statistics); a global Fourier branch makes it
    cfg = dict(channel_mults=(1,), attn_levels=(), in_channels=3, cond_channels=0, out_channels=3)
    far = {}
    for kind in ("none", branch):
        m = make(**cfg, fft_branch=kind).train()
        _randomise_fft(m)
        far[kind] = _far_sensitivity(m)
    assert far[branch] > 3 * far["none"], far
    network = {"ffc": "ffc", "res_fft": "pixel_trunk_fft"}[branch]
    built = build_network({"model": "small", "model_args": {}, "freq_coords": True,
                           "network": network}, _spectral_rep(64))
    kind = {"ffc": "FourierUnit", "res_fft": "ResFFT"}[branch]
    assert built.config["fft_branch"] == branch
    assert any(type(mod).__name__ == kind for mod in built.modules())


def test_res_fft_starts_as_the_spatial_block_and_works_at_any_size():
    cfg = dict(channel_mults=(1, 2), attn_levels=(1,), in_channels=3, cond_channels=0,
               out_channels=3)
    plain, spectral = make(**cfg, fft_branch="none"), make(**cfg, fft_branch="res_fft")
    spectral.load_state_dict(plain.state_dict(), strict=False)  # the same spatial weights
    x = torch.randn(2, 3, 24, 40, generator=torch.Generator().manual_seed(1))
    t = torch.tensor([3, 700])
    torch.testing.assert_close(spectral(x, t), plain(x, t))  # zero-started branch: no change
    _randomise_fft(spectral)
    for h, w in ((24, 40), (17, 31), (64, 64)):  # other sizes than the training window
        y = spectral(torch.randn(1, 3, h, w), torch.tensor([5]))
        assert y.shape == (1, 3, h, w) and torch.isfinite(y).all()


def test_the_res_fft_control_has_its_weights_but_sees_one_pixel():
    from modules import ResConv, ResFFT
    c = 8
    fft, conv = ResFFT(c), ResConv(c)
    weights = lambda m: sum(p.numel() for n, p in m.named_parameters() if n.endswith("weight"))
    assert weights(fft) == weights(conv) == 8 * c * c
    h = torch.randn(1, c, 16, 16, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        assert conv(h).abs().max() == 0  # zero-started, as ResFFT
        for m in (fft, conv):
            m.conv2.weight.normal_(0, 0.1)
        far = h.clone()
        far[..., 12:, 12:] += 1.0  # change pixels far from (0, 0)
        changed = lambda m: float((m(far) - m(h))[..., 0, 0].abs().max())
        assert changed(conv) == 0 and changed(fft) > 1e-3  # local, against global


@pytest.mark.parametrize("branch", ["none", "res_fft", "res_conv", "global_filter"])
def test_the_naf_trunk_keeps_shapes_trains_and_sees_time(branch):
    from modules import NAF_PRESETS, NAFNet
    net = NAFNet(6, 3, **{**NAF_PRESETS["small"], "width": 8, "fft_branch": branch,
                          "window": 48 if branch == "global_filter" else None})
    with torch.no_grad():
        net.conv_out.weight.normal_(0, 0.1)
        for mod in net.modules():
            if type(mod).__name__ == "NAFBlock":
                mod.beta.fill_(0.5)
                mod.gamma.fill_(0.5)
    _randomise_fft(net)
    x = torch.randn(2, 6, 37, 50, generator=torch.Generator().manual_seed(2))
    y = net(x, torch.tensor([0, 999]))
    assert y.shape == (2, 3, 37, 50)
    assert not torch.allclose(net(x, torch.tensor([999, 999]))[0], y[0])  # t matters
    y.square().mean().backward()
    assert all(p.grad is not None for p in net.parameters())
    assert (branch == "res_fft") == any(type(m).__name__ == "ResFFT" for m in net.modules())
    assert (branch == "res_conv") == any(type(m).__name__ == "ResConv" for m in net.modules())
    assert (branch == "global_filter") == any(type(m).__name__ == "GlobalFilter"
                                              for m in net.modules())


def test_the_global_filter_is_a_window_wide_depthwise_convolution():
    """GlobalFilter at its training size is a circular convolution of each channel with its own
    window-sized kernel (the inverse FFT of its weights): checked against the sum over shifts."""
    from modules import GlobalFilter
    gen = torch.Generator().manual_seed(4)
    gf = GlobalFilter(3, (8, 6))
    with torch.no_grad():
        gf.real.normal_(generator=gen)
        gf.imag.normal_(generator=gen)
        x = torch.randn(2, 3, 8, 6, generator=gen, dtype=torch.float64).float()
        delta = torch.zeros(1, 3, 8, 6)
        delta[..., 0, 0] = 1
        kernel = gf(delta)[0]  # (3, 8, 6): the response to a unit impulse, per channel
        expect = torch.zeros_like(x)
        for dy in range(8):
            for dx in range(6):
                expect += kernel[:, dy, dx, None, None] * torch.roll(x, (dy, dx), dims=(2, 3))
        torch.testing.assert_close(gf(x), expect, rtol=1e-4, atol=1e-4)
        assert kernel[:, 4:, 3:].abs().max() > 1e-3  # it reaches across the window


def test_the_global_filter_starts_at_zero_can_stop_one_orientation_and_works_at_any_size():
    from helpers.errors import ConfigError
    from modules import NAF_PRESETS, GlobalFilter, NAFNet
    cfg = {**NAF_PRESETS["small"], "width": 8, "window": 32}
    plain, gf_net = NAFNet(6, 3, **cfg), NAFNet(6, 3, **{**cfg, "fft_branch": "global_filter"})
    missing = gf_net.load_state_dict(plain.state_dict(), strict=False).missing_keys
    assert missing and all(k.endswith((".real", ".imag")) for k in missing)
    x = torch.randn(1, 6, 32, 32, generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(gf_net(x, torch.tensor([3])), plain(x, torch.tensor([3])))
    # the window at the two outer levels (filter_levels), in the encoder and the decoder
    sizes = sorted(m.size for m in gf_net.modules() if isinstance(m, GlobalFilter))
    assert sizes == [(16, 16), (16, 16), (32, 32), (32, 32)], sizes
    every = NAFNet(6, 3, **{**cfg, "fft_branch": "global_filter", "filter_levels": 5})
    assert {m.size for m in every.modules() if isinstance(m, GlobalFilter)} == \
        {(32, 32), (16, 16), (8, 8), (4, 4), (2, 2)}  # 4 levels and the middle
    second = NAFNet(6, 3, **{**cfg, "fft_branch": "global_filter", "filter_levels": [1]})
    assert [m.size for m in second.modules() if isinstance(m, GlobalFilter)] == [(16, 16)] * 2
    assert second.config["filter_levels"] == [1] and every.config["filter_levels"] == [0, 1, 2,
                                                                                         3, 4]
    with pytest.raises(ConfigError, match="filter_levels"):
        NAFNet(6, 3, **{**cfg, "fft_branch": "global_filter", "filter_levels": ["0"]})
    # weights of 1 except on the vertical-frequency axis (fx = 0): vertical stripes pass,
    # horizontal stripes (all their energy at fx = 0) are stopped
    gf = GlobalFilter(1, (16, 16))
    with torch.no_grad():
        gf.real.fill_(1.0)
        gf.real[:, :, 0] = 0.0
        yy, xx = torch.meshgrid(torch.arange(16.), torch.arange(16.), indexing="ij")
        across = torch.cos(2 * torch.pi * 3 * xx / 16)  # varies along x: fx = 3
        along = torch.cos(2 * torch.pi * 3 * yy / 16)  # varies along y: fx = 0
        torch.testing.assert_close(gf(across[None, None])[0, 0], across, atol=1e-5, rtol=0)
        assert gf(along[None, None]).abs().max() < 1e-5
        # another size: the weights are resampled over the centred frequency grid; a constant
        # filter stays that constant
        gf.real.fill_(0.5)
        y = torch.randn(1, 1, 20, 13)
        torch.testing.assert_close(gf(y), 0.5 * y, atol=1e-5, rtol=0)
    _randomise_fft(gf_net)
    out = gf_net(torch.randn(1, 6, 45, 27), torch.tensor([7]))
    assert out.shape == (1, 3, 45, 27) and torch.isfinite(out).all()


def test_every_network_builds_from_a_config_and_from_its_own_record():
    import json
    from modules import NETWORKS
    rep = _spectral_rep(16)
    for name in NETWORKS:
        cfg = {"model": "small", "model_args": {}, "freq_coords": True, "network": name}
        net = build_network(cfg, rep)
        again = build_network(cfg, rep, trunk_config=json.loads(json.dumps(net.config)))
        again.load_state_dict(net.state_dict())
        x = torch.randn(1, 6, 16, 16)
        cond = rep.encode(None, torch.rand(1, 3, 16, 16, dtype=torch.float64))[1].float()
        torch.testing.assert_close(again(x, torch.tensor([5]), cond), net(x, torch.tensor([5]),
                                                                          cond))
