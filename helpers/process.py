"""Pure numerical primitives the representations are built from (representations/*.py).

Every function takes numpy arrays or torch tensors and returns the same kind; none holds state,
picks a device or reads a file. Layout conventions:

    image     (..., 3, H, W)  float in [0, 1], RGB
    complex   (..., 3, H, W)  the fftshift-ed, orthonormal 2-D FFT of each colour channel
"""
import math

import numpy as np
import torch

FFT_NORM = "ortho"  # orthonormal: values do not grow with the image size, so statistics transfer
NORM_EPS = 1e-8  # the original normalisation's epsilon, kept so old statistics stay meaningful


def is_torch(x):
    return isinstance(x, torch.Tensor)


def cat_channels(parts, like):
    """Concatenate along the channel axis (-3), numpy or torch like `like`."""
    return torch.cat(parts, dim=-3) if is_torch(like) else np.concatenate(parts, axis=-3)


def split_channels(x):
    """(..., 2k, H, W) -> its two halves (..., k, H, W)."""
    k = x.shape[-3] // 2
    return x[..., :k, :, :], x[..., k:, :, :]


# ---------------------------------------------------------------- signed log and [-1, 1] maps
def signed_log_scale(x):
    """sign(x) * log1p(|x|): compresses a heavy-tailed signed quantity, exactly invertible."""
    if is_torch(x):
        return torch.sign(x) * torch.log1p(torch.abs(x))
    return np.sign(x) * np.log1p(np.abs(x))


def signed_log_inverse(y):
    """Inverse of signed_log_scale: sign(y) * expm1(|y|)."""
    if is_torch(y):
        return torch.sign(y) * torch.expm1(torch.abs(y))
    return np.sign(y) * np.expm1(np.abs(y))


def identity(x):
    return x


def normalize(x, lo, hi):
    """Map [lo, hi] to [-1, 1]: 2 (x - lo) / (hi - lo + eps) - 1. lo, hi broadcast against x."""
    return 2.0 * (x - lo) / (hi - lo + NORM_EPS) - 1.0


def denormalize(x_n, lo, hi):
    """Exact inverse of normalize."""
    return (x_n + 1.0) / 2.0 * (hi - lo + NORM_EPS) + lo


def clip(x, c):
    return torch.clamp(x, -c, c) if is_torch(x) else np.clip(x, -c, c)


# ---------------------------------------------------------------- complex FFT of an image
def fft_image(image):
    """(..., 3, H, W) real -> (..., 3, H, W) complex, orthonormal, zero frequency at the centre."""
    if is_torch(image):
        return torch.fft.fftshift(torch.fft.fft2(image, norm=FFT_NORM), dim=(-2, -1))
    return np.fft.fftshift(np.fft.fft2(image, norm=FFT_NORM), axes=(-2, -1))


def ifft_image(spec):
    """Inverse of fft_image. Takes the real part, never the modulus: the real part of the inverse
    FFT is the inverse FFT of the Hermitian-symmetric part of `spec`, so a generated spectrum that
    is not exactly Hermitian is projected onto the nearest real image instead of being folded to
    non-negative values as abs() would do. ifftshift (not fftshift) makes odd sizes exact."""
    if is_torch(spec):
        return torch.fft.ifft2(torch.fft.ifftshift(spec, dim=(-2, -1)), norm=FFT_NORM).real
    return np.fft.ifft2(np.fft.ifftshift(spec, axes=(-2, -1)), norm=FFT_NORM).real


def wrap_phase(d):
    """Wrap an angle to (-pi, pi]: a raw difference of two phases spans (-2pi, 2pi) and puts the
    same rotation at two places (e.g. -3pi/2 and pi/2), which a model would have to learn twice."""
    if is_torch(d):
        w = torch.remainder(d + math.pi, 2 * math.pi) - math.pi
        return torch.where(w <= -math.pi, w + 2 * math.pi, w)
    w = np.remainder(d + math.pi, 2 * math.pi) - math.pi
    return np.where(w <= -math.pi, w + 2 * math.pi, w)


def abs_angle(f):
    """(|f|, angle f) with the angle in (-pi, pi]. angle() returns -pi or +pi for a negative real
    number depending on the sign of a zero imaginary part (numpy and torch differ); wrapping
    makes the range the same in both."""
    if is_torch(f):
        return torch.abs(f), wrap_phase(torch.angle(f))
    return np.abs(f), wrap_phase(np.angle(f))


def polar(mag, phase):
    if is_torch(mag):
        return torch.polar(mag, phase)
    return mag * np.exp(1j * phase)


def complex_from(re, im):
    if is_torch(re):
        return torch.complex(re, im)
    return re + 1j * im


def clamp_min0(x):
    return torch.clamp(x, min=0) if is_torch(x) else np.maximum(x, 0)


def centred_freq_coords(h, w, device=None, dtype=torch.float32):
    """Frequency-coordinate channels of an fftshift-ed spectrum of size (h, w) -> (3, h, w).

    Channel 0: fy, channel 1: fx, both equal to ``fftshift(fftfreq(n)) * 2`` along their axis,
    i.e. in [-1, 1) with 0 exactly at the zero-frequency pixel (index n // 2); channel 2: radius
    sqrt(fy^2 + fx^2) / sqrt(2) in [0, 1], the isotropic "how high a frequency" signal that rain
    streaks and image content differ in most. Written with arange rather than fftfreq so it stays
    a trivial op under torch.compile: fftshift(fftfreq(n))[k] == (k - n // 2) / n. The size only
    ever meets tensors (no Python float like ``2.0 / h``): with dynamic shapes such a float
    becomes a symbolic scalar that some torch.compile versions fail to lower."""
    fy = (torch.arange(h, device=device, dtype=torch.float32) - h // 2) * 2 / h  # (h,)
    fx = (torch.arange(w, device=device, dtype=torch.float32) - w // 2) * 2 / w  # (w,)
    return coords_channels(fy, fx, dtype)


def coords_channels(fy, fx, dtype=torch.float32):
    """(fy, fx, radius) channels (3, h, w) from the row and column frequencies (h,), (w,)."""
    h, w = fy.shape[0], fx.shape[0]
    fy = fy[:, None].expand(h, w)  # (h, w)
    fx = fx[None, :].expand(h, w)  # (h, w)
    rad = torch.sqrt(fy * fy + fx * fx) * (1.0 / math.sqrt(2.0))  # (h, w)
    return torch.stack([fy, fx, rad], dim=0).to(dtype)  # (3, h, w)
