"""Pure transforms between images and the 6-channel spectra the diffusion model works on.

Every function takes numpy arrays or torch tensors and returns the same kind; none holds state,
picks a device or reads a file. Layout conventions:

    image     (..., 3, H, W)  float in [0, 1], RGB
    complex   (..., 3, H, W)  the fftshift-ed, orthonormal 2-D FFT of each colour channel
    spectrum  (..., 6, H, W)  channels [a R,G,B | b R,G,B]:
              representation "magphase": a = signed_log(|F|),  b = angle(F)
              representation "realimag": a = signed_log(Re F), b = signed_log(Im F)

Targets (what the diffusion model generates, conditioned on the rain spectrum):
    "diff"  : the spectrum of the change clean - rain (the original system's target);
              magphase: [signed_log(|C| - |R|), wrap(angle C - angle R)]
              realimag: the spectrum of C - R
    "clean" : the clean spectrum itself (the original notes' second experiment).

`log=False` leaves out the signed log everywhere (what get_fft_statistics.py measures).
"""
import math

import numpy as np
import torch

REPRESENTATIONS = ("magphase", "realimag")
TARGETS = ("diff", "clean")
FFT_NORM = "ortho"  # orthonormal: values do not grow with the image size, so statistics transfer
NORM_EPS = 1e-8  # the original normalisation's epsilon, kept so old statistics stay meaningful


def _is_torch(x):
    return isinstance(x, torch.Tensor)


def _cat(parts, x):
    return torch.cat(parts, dim=-3) if _is_torch(x) else np.concatenate(parts, axis=-3)


def _split(x):
    return x[..., :3, :, :], x[..., 3:, :, :]


# ---------------------------------------------------------------- signed log and [-1, 1] maps
def signed_log_scale(x):
    """sign(x) * log1p(|x|): compresses a heavy-tailed signed quantity, exactly invertible."""
    if _is_torch(x):
        return torch.sign(x) * torch.log1p(torch.abs(x))
    return np.sign(x) * np.log1p(np.abs(x))


def signed_log_inverse(y):
    """Inverse of signed_log_scale: sign(y) * expm1(|y|)."""
    if _is_torch(y):
        return torch.sign(y) * torch.expm1(torch.abs(y))
    return np.sign(y) * np.expm1(np.abs(y))


def normalize(x, lo, hi):
    """Map [lo, hi] to [-1, 1]: 2 (x - lo) / (hi - lo + eps) - 1. lo, hi broadcast against x."""
    return 2.0 * (x - lo) / (hi - lo + NORM_EPS) - 1.0


def denormalize(x_n, lo, hi):
    """Exact inverse of normalize."""
    return (x_n + 1.0) / 2.0 * (hi - lo + NORM_EPS) + lo


# ---------------------------------------------------------------- complex FFT of an image
def fft_image(image):
    """(..., 3, H, W) real -> (..., 3, H, W) complex, orthonormal, zero frequency at the centre."""
    if _is_torch(image):
        return torch.fft.fftshift(torch.fft.fft2(image, norm=FFT_NORM), dim=(-2, -1))
    return np.fft.fftshift(np.fft.fft2(image, norm=FFT_NORM), axes=(-2, -1))


def ifft_image(spec):
    """Inverse of fft_image. Takes the real part, never the modulus: the real part of the inverse
    FFT is the inverse FFT of the Hermitian-symmetric part of `spec`, so a generated spectrum that
    is not exactly Hermitian is projected onto the nearest real image instead of being folded to
    non-negative values as abs() would do. ifftshift (not fftshift) makes odd sizes exact."""
    if _is_torch(spec):
        return torch.fft.ifft2(torch.fft.ifftshift(spec, dim=(-2, -1)), norm=FFT_NORM).real
    return np.fft.ifft2(np.fft.ifftshift(spec, axes=(-2, -1)), norm=FFT_NORM).real


def hermitian_part(spec):
    """(F(k) + conj F(-k)) / 2 for a centred spectrum: the spectrum of the real image it encodes."""
    if _is_torch(spec):
        f = torch.fft.ifftshift(spec, dim=(-2, -1))
        f_neg = torch.roll(torch.flip(f, dims=(-2, -1)), shifts=(1, 1), dims=(-2, -1))
        return torch.fft.fftshift((f + f_neg.conj()) / 2, dim=(-2, -1))
    f = np.fft.ifftshift(spec, axes=(-2, -1))
    f_neg = np.roll(np.flip(f, axis=(-2, -1)), shift=(1, 1), axis=(-2, -1))
    return np.fft.fftshift((f + np.conj(f_neg)) / 2, axes=(-2, -1))


def _wrap_phase(d):
    """Wrap an angle to (-pi, pi]: a raw difference of two phases spans (-2pi, 2pi) and puts the
    same rotation at two places (e.g. -3pi/2 and pi/2), which a model would have to learn twice."""
    if _is_torch(d):
        w = torch.remainder(d + math.pi, 2 * math.pi) - math.pi
        return torch.where(w <= -math.pi, w + 2 * math.pi, w)
    w = np.remainder(d + math.pi, 2 * math.pi) - math.pi
    return np.where(w <= -math.pi, w + 2 * math.pi, w)


def _abs_angle(f):
    # angle() returns -pi or +pi for a negative real number depending on the sign of a zero
    # imaginary part (numpy and torch differ); wrapping makes the range (-pi, pi] in both.
    if _is_torch(f):
        return torch.abs(f), _wrap_phase(torch.angle(f))
    return np.abs(f), _wrap_phase(np.angle(f))


def _polar(mag, phase):
    if _is_torch(mag):
        return torch.polar(mag, phase)
    return mag * np.exp(1j * phase)


def _complex(re, im):
    if _is_torch(re):
        return torch.complex(re, im)
    return re + 1j * im


def _clamp_min0(x):
    return torch.clamp(x, min=0) if _is_torch(x) else np.maximum(x, 0)


# ---------------------------------------------------------------- complex <-> 6 channels
def complex_to_channels(spec, representation="magphase", log=True):
    """(..., 3, H, W) complex -> (..., 6, H, W) real in the chosen representation."""
    _check(representation, REPRESENTATIONS, "representation")
    slog = signed_log_scale if log else (lambda v: v)
    if representation == "magphase":
        mag, phase = _abs_angle(spec)
        return _cat([slog(mag), phase], mag)
    return _cat([slog(spec.real), slog(spec.imag)], spec.real)


def channels_to_complex(channels, representation="magphase", log=True):
    """Inverse of complex_to_channels; a negative magnitude (possible for a generated spectrum)
    is clamped to 0 rather than flipping the phase."""
    _check(representation, REPRESENTATIONS, "representation")
    inv = signed_log_inverse if log else (lambda v: v)
    a, b = _split(channels)
    if representation == "magphase":
        return _polar(_clamp_min0(inv(a)), b)
    return _complex(inv(a), inv(b))


def image_to_spectrum(image, representation="magphase", log=True):
    """(..., 3, H, W) image in [0, 1] -> (..., 6, H, W) spectrum."""
    return complex_to_channels(fft_image(image), representation, log)


def spectrum_to_image(spectrum, representation="magphase", log=True):
    """(..., 6, H, W) spectrum -> (..., 3, H, W) image (not clipped)."""
    return ifft_image(channels_to_complex(spectrum, representation, log))


# ---------------------------------------------------------------- targets: diff or clean
def encode_target(clean_spec, rain_spec, representation="magphase", target="diff", log=True):
    """Complex spectra of the clean and rainy image -> the 6-channel target the model generates."""
    _check(target, TARGETS, "target")
    if target == "clean":
        return complex_to_channels(clean_spec, representation, log)
    if representation == "realimag":
        return complex_to_channels(clean_spec - rain_spec, representation, log)
    _check(representation, REPRESENTATIONS, "representation")
    slog = signed_log_scale if log else (lambda v: v)
    mag_c, ph_c = _abs_angle(clean_spec)
    mag_r, ph_r = _abs_angle(rain_spec)
    return _cat([slog(mag_c - mag_r), _wrap_phase(ph_c - ph_r)], mag_c)


def decode_target(target_channels, rain_spec, representation="magphase", target="diff", log=True):
    """Inverse of encode_target: the 6-channel target and the rain spectrum -> clean spectrum."""
    _check(target, TARGETS, "target")
    if target == "clean":
        return channels_to_complex(target_channels, representation, log)
    if representation == "realimag":
        return rain_spec + channels_to_complex(target_channels, representation, log)
    _check(representation, REPRESENTATIONS, "representation")
    inv = signed_log_inverse if log else (lambda v: v)
    d_mag, d_phase = _split(target_channels)
    mag_r, ph_r = _abs_angle(rain_spec)
    return _polar(_clamp_min0(mag_r + inv(d_mag)), ph_r + d_phase)


def pair_to_spectra(clean, rain, representation="magphase", target="diff", log=True):
    """Clean and rainy images (..., 3, H, W) -> (target, condition), each (..., 6, H, W)."""
    rain_spec = fft_image(rain)
    return (encode_target(fft_image(clean), rain_spec, representation, target, log),
            complex_to_channels(rain_spec, representation, log))


def spectra_to_clean(target_channels, condition, representation="magphase", target="diff",
                     log=True):
    """(target, condition) spectra -> the clean image (..., 3, H, W), not clipped."""
    rain_spec = channels_to_complex(condition, representation, log)
    return ifft_image(decode_target(target_channels, rain_spec, representation, target, log))


def _check(value, allowed, name):
    if value not in allowed:
        raise ValueError(f"unknown {name} {value!r}; choose one of {', '.join(allowed)}")
