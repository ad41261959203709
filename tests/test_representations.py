"""The representations (representations/): the interface every registered one keeps, exact round
trips for uint8 images, numerical hazards of the Fourier ones, and the checkpoint state."""
import math

import numpy as np
import pytest
import torch

import representations
from helpers import process as P

SIZES = [(32, 32), (31, 31), (17, 40), (40, 17)]  # even, odd, non-square both ways
NAMES = representations.names()
COMBOS = [(n, t) for n in NAMES for t in representations.TARGETS]


def _pair(h, w, seed=0):
    rng = np.random.default_rng(seed)
    clean = rng.integers(0, 256, (3, h, w)).astype(np.float64)
    rain = np.clip(clean + rng.integers(0, 120, (3, h, w)) * (rng.random((3, h, w)) < 0.2), 0, 255)
    return clean / 255.0, rain / 255.0


def _fitted(name, target, clean, rain, crop, log=True, norm="global"):
    """A representation whose ranges are the min/max of this pair's own encoding (per channel)."""
    rep = representations.make(name, target, norm, crop, log)
    if not rep.needs_statistics:
        return rep
    parts = rep.parts(clean, rain)
    rng = lambda x: (x.min(axis=(-2, -1), keepdims=True), x.max(axis=(-2, -1), keepdims=True))
    ranges = {"target": rng(parts[target]), "cond": rng(parts["rain"])}
    return representations.make(name, target, norm, crop, log, {"ranges": ranges})


@pytest.mark.parametrize("name", NAMES)
def test_every_representation_keeps_the_interface(name):
    clean, rain = _pair(24, 20, seed=1)
    rep = _fitted(name, "diff", clean, rain, 24)
    c, h, w = rep.shape(24, 20)
    assert c == rep.channels == len(rep.channel_names) == len(set(rep.channel_names))
    parts = rep.parts(clean, rain)
    assert set(parts) == {"rain", "diff", "clean"}
    assert all(p.shape == (c, h, w) for p in parts.values())
    tgt, cond = rep.encode(clean, rain)
    assert tgt.shape == cond.shape == (c, h, w)
    extra = rep.extra_inputs(h, w)
    assert (extra is None and rep.extra_channels == 0) or extra.shape == (rep.extra_channels, h, w)
    assert rep.domain in ("fft", "pixel") and rep.summary
    back = representations.from_state(rep.state())
    assert type(back) is type(rep) and back.state().keys() == rep.state().keys()
    np.testing.assert_array_equal(back.encode(clean, rain)[0], tgt)


@pytest.mark.parametrize("name,target", COMBOS)
@pytest.mark.parametrize("h,w", SIZES)
def test_round_trip_is_exact_for_uint8_images(name, target, h, w):
    clean, rain = _pair(h, w, seed=h * w)
    rep = representations.make(name, target, crop=h)
    raw = rep.parts(clean, rain)[target]
    back = rep.from_target(raw, rain)
    assert back.shape == (3, h, w)
    assert np.max(np.abs(back * 255 - clean * 255)) < 0.5


@pytest.mark.parametrize("name,target", COMBOS)
def test_round_trip_through_normalisation_in_float32_torch(name, target):
    clean, rain = _pair(33, 48, seed=7)
    rep = _fitted(name, target, clean, rain, 33)
    clean_t, rain_t = torch.tensor(clean)[None], torch.tensor(rain)[None]  # (1, 3, H, W) batch
    tgt_n, cond_n = rep.encode(clean_t, rain_t)
    tgt_n = tgt_n.float()  # what the dataset hands the model
    if rep.needs_statistics:
        assert tgt_n.min() >= -1 - 1e-6 and tgt_n.max() <= 1 + 1e-6
    back = rep.decode(tgt_n.double(), rain_t)
    assert back.shape == (1, 3, 33, 48)
    assert torch.max(torch.abs(back[0] * 255 - clean_t[0] * 255)) < 0.5


@pytest.mark.parametrize("name", NAMES)
def test_numpy_and_torch_agree_and_decode_is_differentiable(name):
    clean, rain = _pair(20, 24, seed=9)
    rep = _fitted(name, "diff", clean, rain, 20)
    for (k, a), b in zip(rep.parts(clean, rain).items(),
                         rep.parts(torch.tensor(clean), torch.tensor(rain)).values()):
        np.testing.assert_allclose(a, b.numpy(), atol=1e-10, err_msg=k)
    tgt, _ = rep.encode(torch.tensor(clean), torch.tensor(rain))
    tgt = tgt.float().requires_grad_()
    out = rep.decode(tgt, torch.tensor(rain, dtype=torch.float32))
    assert out.dtype == torch.float32
    (out ** 2).sum().backward()
    assert torch.isfinite(tgt.grad).all() and tgt.grad.abs().sum() > 0


def test_phase_difference_is_wrapped():
    clean, rain = _pair(31, 40, seed=3)
    phase = representations.make("magphase").parts(clean, rain)["diff"][3:]
    assert phase.min() > -math.pi - 1e-12 and phase.max() <= math.pi + 1e-12
    # and it is the angle of C * conj(R), not a raw difference that can reach +-2pi
    c, r = P.fft_image(clean), P.fft_image(rain)
    d = np.angle(np.exp(1j * (phase - np.angle(c * np.conj(r)))))  # equal modulo 2pi
    np.testing.assert_allclose(d, 0, atol=1e-9)


def test_generated_negative_magnitudes_are_clamped():
    clean, rain = _pair(16, 16, seed=11)
    rep = representations.make("magphase")
    rain_spec = rep.transform(rain)
    huge_negative = np.full((6, 16, 16), -50.0)
    huge_negative[3:] = 0.0
    assert np.all(np.abs(rep.add_diff(huge_negative, rain_spec)) == 0)  # not a flipped phase
    assert np.all(np.abs(rep.from_channels(np.full((6, 4, 4), -2.0))) == 0)


def test_log_false_keeps_raw_values():
    clean, rain = _pair(8, 8, seed=12)
    rep = representations.make("realimag", log=False)
    raw = rep.parts(clean, rain)["clean"]
    spec = P.fft_image(clean)
    np.testing.assert_allclose(raw[:3], spec.real)
    np.testing.assert_allclose(raw[3:], spec.imag)
    logged = representations.make("realimag").parts(clean, rain)["clean"]
    np.testing.assert_allclose(logged, P.signed_log_scale(raw))


def test_pixels_are_the_plain_image_maps():
    clean, rain = _pair(8, 8, seed=13)
    rep = representations.make("pixels")
    tgt, cond = rep.encode(clean, rain)
    np.testing.assert_allclose(tgt, clean - rain)
    np.testing.assert_allclose(cond, 2 * rain - 1)
    assert not rep.needs_statistics and rep.extra_inputs(8, 8) is None


def test_encoding_without_statistics_and_unknown_settings_are_refused():
    with pytest.raises(ValueError, match="needs statistics"):
        representations.make("realimag").encode(None, np.zeros((3, 4, 4)))
    with pytest.raises(ValueError, match="representation"):
        representations.make("polar")
    with pytest.raises(ValueError, match="target"):
        representations.make("magphase", target="residual")
    with pytest.raises(ValueError, match="norm"):
        representations.make("magphase", norm="zscore")
