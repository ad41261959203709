"""realimag: the real and imaginary parts of each colour channel's spectrum (the default).

    channels [a R,G,B | b R,G,B], a = slog(Re F), b = slog(Im F), F the fftshift-ed orthonormal
    FFT of a window; slog = sign(x) log1p(|x|), or the identity with log=False (linear).
    target "diff": the channels of F(clean) - F(rain), the spectrum of the change clean - rain.
"""
from helpers import process as P
from representations.base import FourierRepresentation


class RealImag(FourierRepresentation):
    name = "realimag"
    summary = "Re F, Im F"
    channel_names = tuple(f"{k}_{c}" for k in ("real", "imag") for c in "RGB")

    def to_channels(self, spec):
        return P.cat_channels([self._slog(spec.real), self._slog(spec.imag)], spec.real)

    def from_channels(self, channels):
        a, b = P.split_channels(channels)
        return P.complex_from(self._slog_inv(a), self._slog_inv(b))
