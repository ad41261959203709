"""rfft2: the half spectrum of a real image, without its redundant Hermitian half.

The FFT of a real image satisfies F(-k) = conj F(k), so half of the full spectrum repeats the
other half. torch.fft.rfft2 keeps the non-negative column frequencies only: an h x w window
becomes h x (w // 2 + 1) complex coefficients (orthonormal, rows fftshift-ed so the zero row
frequency is at row h // 2, columns 0 .. w // 2 left to right), stored as

    channels [a R,G,B | b R,G,B], a = slog(Re F), b = slog(Im F) (linear with log=False),
    target "diff": the channels of F(clean) - F(rain).

The model sees about half the coefficients of realimag, and every generated coefficient is a
free one: the inverse (irfft2 at the window's size) can only give a real image. The extra inputs
are the (fy, fx, radius) coordinates of the half spectrum, fx in [0, 1].
"""
import numpy as np
import torch

from helpers import process as P
from representations.base import FourierRepresentation


class Rfft2(FourierRepresentation):
    name = "rfft2"
    summary = "Re, Im of the half FFT"
    channel_names = tuple(f"{k}_{c}" for k in ("real", "imag") for c in "RGB")

    def shape(self, h, w):
        return self.channels, h, w // 2 + 1

    def transform(self, image):
        if P.is_torch(image):
            return torch.fft.fftshift(torch.fft.rfft2(image, norm=P.FFT_NORM), dim=-2)
        return np.fft.fftshift(np.fft.rfft2(image, norm=P.FFT_NORM), axes=-2)

    def inverse(self, spec, size):
        if P.is_torch(spec):
            return torch.fft.irfft2(torch.fft.ifftshift(spec, dim=-2), s=size, norm=P.FFT_NORM)
        return np.fft.irfft2(np.fft.ifftshift(spec, axes=-2), s=size, norm=P.FFT_NORM)

    def to_channels(self, spec):
        return P.cat_channels([self._slog(spec.real), self._slog(spec.imag)], spec.real)

    def from_channels(self, channels):
        a, b = P.split_channels(channels)
        return P.complex_from(self._slog_inv(a), self._slog_inv(b))

    def extra_inputs(self, h, w, device=None, dtype=torch.float32):
        # w = w_window // 2 + 1 columns: frequencies k / w_window, k = 0 .. w - 1, scaled to
        # [0, 1] as the full spectrum's are to [-1, 1) (taking w_window = 2 (w - 1), even)
        fy = (torch.arange(h, device=device, dtype=torch.float32) - h // 2) * 2 / h
        fx = torch.arange(w, device=device, dtype=torch.float32) / max(1, w - 1)
        return P.coords_channels(fy, fx, dtype)
