"""Round trips and numerical hazards of helpers/process.py, in numpy and torch."""
import math

import numpy as np
import pytest
import torch

from helpers import process as P

SIZES = [(32, 32), (31, 31), (17, 40), (40, 17)]  # even, odd, non-square both ways
COMBOS = [(r, t) for r in P.REPRESENTATIONS for t in P.TARGETS]


def _pair(h, w, seed=0):
    rng = np.random.default_rng(seed)
    clean = rng.integers(0, 256, (3, h, w)).astype(np.float64)
    rain = np.clip(clean + rng.integers(0, 120, (3, h, w)) * (rng.random((3, h, w)) < 0.2), 0, 255)
    return clean / 255.0, rain / 255.0


def test_signed_log_round_trip_and_sign():
    x = np.array([-1e8, -3.5, -1e-9, 0.0, 1e-9, 2.0, 1e8])
    y = P.signed_log_scale(x)
    assert np.all(np.sign(y) == np.sign(x))
    np.testing.assert_allclose(P.signed_log_inverse(y), x, rtol=1e-12, atol=1e-20)
    t = torch.tensor(x)
    torch.testing.assert_close(P.signed_log_inverse(P.signed_log_scale(t)), t, rtol=1e-12, atol=0)


def test_normalize_maps_range_to_unit_interval_and_inverts():
    lo, hi = np.array(-3.0), np.array(5.0)
    x = np.linspace(-3, 5, 11)
    xn = P.normalize(x, lo, hi)
    assert xn[0] == pytest.approx(-1.0) and xn[-1] == pytest.approx(1.0, abs=1e-8)
    np.testing.assert_allclose(P.denormalize(xn, lo, hi), x, atol=1e-12)


def test_fft_is_orthonormal_so_statistics_do_not_depend_on_size():
    # the same constant image at two sizes: the unnormalised FFT's DC grows with H*W, ortho's with
    # sqrt(H*W) only; Parseval: energy of the spectrum equals the energy of the image.
    img = np.random.default_rng(1).random((3, 24, 36))
    spec = P.fft_image(img)
    np.testing.assert_allclose(np.sum(np.abs(spec) ** 2), np.sum(img ** 2), rtol=1e-10)
    small, big = np.random.default_rng(2).random((2, 3, 64, 64))
    # mean |F|^2 over frequencies equals mean pixel power, whatever the size
    p_small = np.mean(np.abs(P.fft_image(small[:, :32, :32])) ** 2)
    p_big = np.mean(np.abs(P.fft_image(big)) ** 2)
    assert p_small == pytest.approx(p_big, rel=0.1)


def test_zero_frequency_is_at_the_centre_for_odd_and_even_sizes():
    for h, w in SIZES:
        spec = P.fft_image(np.ones((3, h, w)))
        peak = np.unravel_index(np.argmax(np.abs(spec[0])), (h, w))
        assert peak == (h // 2, w // 2)


def test_phase_difference_is_wrapped():
    clean, rain = _pair(31, 40, seed=3)
    target, _ = P.pair_to_spectra(clean, rain, "magphase", "diff")
    phase = target[3:]
    assert phase.min() > -math.pi - 1e-12 and phase.max() <= math.pi + 1e-12
    # and it is the angle of C * conj(R), not a raw difference that can reach +-2pi
    c, r = P.fft_image(clean), P.fft_image(rain)
    expected = np.angle(c * np.conj(r))
    d = np.angle(np.exp(1j * (phase - expected)))  # equal modulo 2pi...
    np.testing.assert_allclose(d, 0, atol=1e-9)
    # ...and exactly in (-pi, pi]
    assert np.all(np.abs(phase - expected) < 1e-9) or np.all(np.abs(np.abs(phase) - math.pi) < 1e-9)


def test_wrap_phase_edges():
    for mod, arr in ((np, np.array), (torch, lambda v: torch.tensor(v, dtype=torch.float64))):
        w = P._wrap_phase(arr([-2 * math.pi + 0.1, -math.pi, math.pi, 1.5 * math.pi, 3 * math.pi]))
        w = np.asarray(w)
        np.testing.assert_allclose(w, [0.1, math.pi, math.pi, -0.5 * math.pi, math.pi], atol=1e-12)


@pytest.mark.parametrize("representation,target", COMBOS)
@pytest.mark.parametrize("h,w", SIZES)
def test_round_trip_is_exact_for_uint8_images(representation, target, h, w):
    clean, rain = _pair(h, w, seed=h * w)
    tgt, cond = P.pair_to_spectra(clean, rain, representation, target)
    assert tgt.shape == cond.shape == (6, h, w)
    back = P.spectra_to_clean(tgt, cond, representation, target)
    assert np.max(np.abs(back * 255 - clean * 255)) < 0.5
    # image -> spectrum -> image, no target
    for img in (clean, rain):
        spec = P.image_to_spectrum(img, representation)
        assert np.max(np.abs(P.spectrum_to_image(spec, representation) * 255 - img * 255)) < 0.5


@pytest.mark.parametrize("representation,target", COMBOS)
def test_round_trip_through_normalisation_in_float32_torch(representation, target):
    clean, rain = _pair(33, 48, seed=7)
    clean_t = torch.tensor(clean)[None]  # (1, 3, H, W) batch
    rain_t = torch.tensor(rain)[None]
    tgt, cond = P.pair_to_spectra(clean_t, rain_t, representation, target)
    lo_t, hi_t = tgt.amin(dim=(0, 2, 3), keepdim=True)[0], tgt.amax(dim=(0, 2, 3), keepdim=True)[0]
    lo_c, hi_c = cond.amin(dim=(0, 2, 3), keepdim=True)[0], cond.amax(dim=(0, 2, 3), keepdim=True)[0]
    tgt_n = P.normalize(tgt, lo_t, hi_t).float()  # what the dataset hands the model
    cond_n = P.normalize(cond, lo_c, hi_c).float()
    assert tgt_n.min() >= -1 - 1e-6 and tgt_n.max() <= 1 + 1e-6
    back = P.spectra_to_clean(P.denormalize(tgt_n.double(), lo_t, hi_t),
                              P.denormalize(cond_n.double(), lo_c, hi_c), representation, target)
    assert back.shape == (1, 3, 33, 48)
    assert torch.max(torch.abs(back[0] * 255 - clean_t[0] * 255)) < 0.5


def test_numpy_and_torch_agree():
    clean, rain = _pair(20, 24, seed=9)
    for rep, tgt in COMBOS:
        a = P.pair_to_spectra(clean, rain, rep, tgt)
        b = P.pair_to_spectra(torch.tensor(clean), torch.tensor(rain), rep, tgt)
        for x, y in zip(a, b):
            np.testing.assert_allclose(x, y.numpy(), atol=1e-10)


def test_reconstruction_takes_real_part_of_hermitian_projection():
    # a generated spectrum is not exactly Hermitian: the image must be the real part of its
    # inverse (= the inverse of its Hermitian part), never the modulus, which folds negatives up.
    img = np.random.default_rng(4).random((3, 15, 22)) - 0.5  # has negative values
    spec = P.fft_image(img)
    noise = np.random.default_rng(5).normal(size=spec.shape) * 1j * 0.1
    out = P.ifft_image(spec + noise)
    assert np.isrealobj(out) and out.min() < 0
    np.testing.assert_allclose(out, P.ifft_image(P.hermitian_part(spec + noise)), atol=1e-12)
    np.testing.assert_allclose(P.hermitian_part(spec), spec, atol=1e-12)  # real image: Hermitian


def test_generated_negative_magnitudes_are_clamped():
    clean, rain = _pair(16, 16, seed=11)
    _, cond = P.pair_to_spectra(clean, rain, "magphase", "diff")
    rain_spec = P.channels_to_complex(cond, "magphase")
    huge_negative = np.full((6, 16, 16), -50.0)
    huge_negative[3:] = 0.0
    c = P.decode_target(huge_negative, rain_spec, "magphase", "diff")
    assert np.all(np.abs(c) == 0)  # clamped at 0, not a flipped phase with a large modulus
    mag_channels = np.full((6, 4, 4), -2.0)
    assert np.all(np.abs(P.channels_to_complex(mag_channels, "magphase")) == 0)


def test_log_false_keeps_raw_values():
    clean, rain = _pair(8, 8, seed=12)
    raw = P.image_to_spectrum(clean, "realimag", log=False)
    spec = P.fft_image(clean)
    np.testing.assert_allclose(raw[:3], spec.real)
    np.testing.assert_allclose(raw[3:], spec.imag)
    assert np.max(np.abs(P.spectrum_to_image(raw, "realimag", log=False) - clean)) < 1e-12


def test_unknown_settings_are_refused():
    with pytest.raises(ValueError, match="representation"):
        P.image_to_spectrum(np.zeros((3, 4, 4)), "polar")
    with pytest.raises(ValueError, match="target"):
        P.pair_to_spectra(np.zeros((3, 4, 4)), np.zeros((3, 4, 4)), "magphase", "residual")
