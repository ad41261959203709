"""The numerical primitives of helpers/process.py, in numpy and torch (the representations built
from them are tested in test_representations.py)."""
import math

import numpy as np
import pytest
import torch

from helpers import process as P

SIZES = [(32, 32), (31, 31), (17, 40), (40, 17)]  # even, odd, non-square both ways


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


def test_wrap_phase_edges():
    for mod, arr in ((np, np.array), (torch, lambda v: torch.tensor(v, dtype=torch.float64))):
        w = P.wrap_phase(arr([-2 * math.pi + 0.1, -math.pi, math.pi, 1.5 * math.pi, 3 * math.pi]))
        w = np.asarray(w)
        np.testing.assert_allclose(w, [0.1, math.pi, math.pi, -0.5 * math.pi, math.pi], atol=1e-12)


def test_reconstruction_takes_real_part_of_hermitian_projection():
    # a generated spectrum is not exactly Hermitian: the image must be the real part of its
    # inverse (= the inverse of its Hermitian part), never the modulus, which folds negatives up.
    img = np.random.default_rng(4).random((3, 15, 22)) - 0.5  # has negative values
    spec = P.fft_image(img)
    noise = np.random.default_rng(5).normal(size=spec.shape) * 1j * 0.1
    out = P.ifft_image(spec + noise)
    assert np.isrealobj(out) and out.min() < 0
    np.testing.assert_allclose(out, P.ifft_image(hermitian_part(spec + noise)), atol=1e-12)
    np.testing.assert_allclose(hermitian_part(spec), spec, atol=1e-12)  # real image: Hermitian


def hermitian_part(spec):
    """(F(k) + conj F(-k)) / 2 for a centred spectrum: the spectrum of the real image it encodes."""
    f = np.fft.ifftshift(spec, axes=(-2, -1))
    f_neg = np.roll(np.flip(f, axis=(-2, -1)), shift=(1, 1), axis=(-2, -1))
    return np.fft.fftshift((f + np.conj(f_neg)) / 2, axes=(-2, -1))


def test_freq_coord_values_known_size():
    for h, w in [(4, 5), (64, 64), (33, 47)]:
        co = P.centred_freq_coords(h, w)  # (3, H, W)
        assert co.shape == (3, h, w)
        fy = torch.fft.fftshift(torch.fft.fftfreq(h)) * 2
        fx = torch.fft.fftshift(torch.fft.fftfreq(w)) * 2
        torch.testing.assert_close(co[0], fy[:, None].expand(h, w))
        torch.testing.assert_close(co[1], fx[None, :].expand(h, w))
        torch.testing.assert_close(co[2], torch.sqrt(co[0] ** 2 + co[1] ** 2) / 2 ** 0.5)
        assert co[:, h // 2, w // 2].abs().max() == 0  # zero frequency at the fftshift centre
    co = P.centred_freq_coords(4, 5)
    assert co[0, :, 0].tolist() == [-1.0, -0.5, 0.0, 0.5]
    torch.testing.assert_close(co[1, 0], torch.tensor([-0.8, -0.4, 0.0, 0.4, 0.8]))
