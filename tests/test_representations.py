"""The representations (representations/): the interface every registered one keeps, exact round
trips for uint8 images, numerical hazards of the Fourier ones, and the checkpoint state."""
import math

import numpy as np
import pytest
import torch

import representations
from helpers import process as P
from tests.helpers_data import make_rep

SIZES = [(32, 32), (31, 31), (17, 40), (40, 17)]  # even, odd, non-square both ways
NAMES = representations.names()
COMBOS = [(n, t) for n in NAMES for t in representations.TARGETS]


def fit(name, h, w):
    """(h, w) rounded down to what the representation's blocks tile (blockdct), >= one block."""
    b = 8 if "block" in representations.get_class(name).options else None  # make_rep's blocks
    return (max(b, h // b * b), max(b, w // b * b)) if b else (h, w)


def _pair(h, w, seed=0):
    rng = np.random.default_rng(seed)
    clean = rng.integers(0, 256, (3, h, w)).astype(np.float64)
    rain = np.clip(clean + rng.integers(0, 120, (3, h, w)) * (rng.random((3, h, w)) < 0.2), 0, 255)
    return clean / 255.0, rain / 255.0


def _fitted(name, target, clean, rain, crop, log=True, norm="global"):
    """A representation whose ranges are the min/max of this pair's own encoding (per channel)."""
    rep = make_rep(name, target, norm, crop, log)
    if not rep.needs_statistics:
        return rep
    parts = rep.parts(clean, rain)
    rng = lambda x: (x.min(axis=(-2, -1), keepdims=True), x.max(axis=(-2, -1), keepdims=True))
    ranges = {"target": rng(parts[target]), "cond": rng(parts["rain"])}
    return make_rep(name, target, norm, crop, log, {"ranges": ranges})


@pytest.mark.parametrize("name", NAMES)
def test_every_representation_keeps_the_interface(name):
    H, W = fit(name, 24, 20)
    clean, rain = _pair(H, W, seed=1)
    rep = _fitted(name, "diff", clean, rain, H)
    c, h, w = rep.shape(H, W)
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
    h, w = fit(name, h, w)
    clean, rain = _pair(h, w, seed=h * w)
    rep = make_rep(name, target, crop=h)
    raw = rep.parts(clean, rain)[target]
    back = rep.from_target(raw, rain)
    assert back.shape == (3, h, w)
    assert np.max(np.abs(back * 255 - clean * 255)) < 0.5


@pytest.mark.parametrize("name,target", COMBOS)
def test_round_trip_through_normalisation_in_float32_torch(name, target):
    h, w = fit(name, 33, 48)
    clean, rain = _pair(h, w, seed=7)
    rep = _fitted(name, target, clean, rain, h)
    clean_t, rain_t = torch.tensor(clean)[None], torch.tensor(rain)[None]  # (1, 3, H, W) batch
    tgt_n, cond_n = rep.encode(clean_t, rain_t)
    tgt_n = tgt_n.float()  # what the dataset hands the model
    if rep.needs_statistics:
        assert tgt_n.min() >= -1 - 1e-6 and tgt_n.max() <= 1 + 1e-6
    back = rep.decode(tgt_n.double(), rain_t)
    assert back.shape == (1, 3, h, w)
    # the condition gives the rainy window back
    torch.testing.assert_close(rep.cond_to_image(cond_n.double(), (h, w)), rain_t, atol=1e-9,
                               rtol=0)
    assert torch.max(torch.abs(back[0] * 255 - clean_t[0] * 255)) < 0.5


@pytest.mark.parametrize("name", NAMES)
def test_numpy_and_torch_agree_and_decode_is_differentiable(name):
    h, w = fit(name, 20, 24)
    clean, rain = _pair(h, w, seed=9)
    rep = _fitted(name, "diff", clean, rain, h)
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
    phase = make_rep("magphase").parts(clean, rain)["diff"][3:]
    assert phase.min() > -math.pi - 1e-12 and phase.max() <= math.pi + 1e-12
    # and it is the angle of C * conj(R), not a raw difference that can reach +-2pi
    c, r = P.fft_image(clean), P.fft_image(rain)
    d = np.angle(np.exp(1j * (phase - np.angle(c * np.conj(r)))))  # equal modulo 2pi
    np.testing.assert_allclose(d, 0, atol=1e-9)


def test_generated_negative_magnitudes_are_clamped():
    clean, rain = _pair(16, 16, seed=11)
    rep = make_rep("magphase")
    rain_spec = rep.transform(rain)
    huge_negative = np.full((6, 16, 16), -50.0)
    huge_negative[3:] = 0.0
    assert np.all(np.abs(rep.add_diff(huge_negative, rain_spec)) == 0)  # not a flipped phase
    assert np.all(np.abs(rep.from_channels(np.full((6, 4, 4), -2.0))) == 0)


def test_log_false_keeps_raw_values():
    clean, rain = _pair(8, 8, seed=12)
    rep = make_rep("realimag", log=False)
    raw = rep.parts(clean, rain)["clean"]
    spec = P.fft_image(clean)
    np.testing.assert_allclose(raw[:3], spec.real)
    np.testing.assert_allclose(raw[3:], spec.imag)
    logged = make_rep("realimag").parts(clean, rain)["clean"]
    np.testing.assert_allclose(logged, P.signed_log_scale(raw))


def test_pixels_are_the_plain_image_maps():
    clean, rain = _pair(8, 8, seed=13)
    rep = make_rep("pixels")
    tgt, cond = rep.encode(clean, rain)
    np.testing.assert_allclose(tgt, clean - rain)
    np.testing.assert_allclose(cond, 2 * rain - 1)
    assert not rep.needs_statistics and rep.extra_inputs(8, 8) is None


def test_encoding_without_statistics_and_unknown_settings_are_refused():
    with pytest.raises(ValueError, match="needs statistics"):
        make_rep("realimag").encode(None, np.zeros((3, 4, 4)))
    with pytest.raises(ValueError, match="representation"):
        make_rep("polar")
    with pytest.raises(ValueError, match="target"):
        make_rep("magphase", target="residual")
    with pytest.raises(ValueError, match="norm"):
        make_rep("magphase", norm="zscore")


def _stats_of(rep, clean, rain):
    """Per-frequency statistics of one pair's encodings, in the statistics file's layout."""
    parts = rep.parts(clean[None], rain[None])
    freq = {f"{k}_{stat}": getattr(np, stat)(v, axis=0) for k, v in parts.items()
            for stat in ("min", "max", "mean", "std")}
    return {"per_frequency": freq}


def test_scalar_and_partial_norms_scale_frequencies_between_one_scale_and_their_own():
    rng = np.random.default_rng(0)
    clean = rng.random((8, 3, 16, 16))
    rain = np.clip(clean + 0.3 * (rng.random(clean.shape) < 0.1), 0, 1)
    rep = make_rep("realimag", crop=16, log=False)
    parts = rep.parts(clean, rain)
    stats = {"per_frequency": {f"{k}_{stat}": getattr(np, stat)(v, axis=0)
                               for k, v in parts.items() for stat in ("mean", "std")}}
    spans = {}
    for norm, gamma in (("perfreq_std", 1.0), ("partial_std", 0.5), ("scalar_std", 0.0)):
        r = make_rep("realimag", "diff", norm, 16, False, stats, norm_gamma=gamma)
        lo, hi = r.ranges["target"]
        spans[norm] = (hi - lo) / 4  # the scale each frequency is divided by
    std = stats["per_frequency"]["diff_std"]
    np.testing.assert_allclose(spans["perfreq_std"], std)
    assert np.ptp(spans["scalar_std"]) < 1e-12  # one scale for every coefficient
    np.testing.assert_allclose(spans["partial_std"] ** 2, spans["perfreq_std"] *
                               spans["scalar_std"], rtol=1e-9)  # the geometric mean of the two


def test_block_dct_is_orthonormal_and_keeps_locality():
    rep = make_rep("blockdct", crop=16, log=False, block=4)
    assert rep.shape(16, 16) == (48, 4, 4) and rep.channel_names[:2] == ("dct0_0_R", "dct0_1_R")
    img = np.random.default_rng(2).random((3, 16, 16))
    coeffs = rep.transform(img)
    assert np.sum(coeffs ** 2) == pytest.approx(np.sum(img ** 2))  # Parseval
    ch = rep.to_channels(coeffs)
    np.testing.assert_allclose(ch[0, 1, 2], img[0, 4:8, 8:12].mean() * 4)  # DC of block (1, 2)
    changed = img.copy()
    changed[:, :4, :4] += 0.5  # a change in the top-left block only...
    diff = rep.to_channels(rep.transform(changed)) - ch
    assert np.abs(diff[:, 0, 0]).max() > 0 and np.abs(diff[:, 1:, :]).max() < 1e-12  # ...stays
    with pytest.raises(ValueError, match="multiple of --block"):
        make_rep("blockdct", crop=18, block=4)
