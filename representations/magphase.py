"""magphase: magnitude and phase of each colour channel's spectrum (the original system's).

    channels [a R,G,B | b R,G,B], a = slog(|F|), b = angle(F) in (-pi, pi].
    target "diff": [slog(|C| - |R|), wrap(angle C - angle R)], the phase difference wrapped to
    (-pi, pi] (the angle of C conj(R)); the original's raw difference spanned (-2pi, 2pi).
A generated magnitude below zero is clamped to 0 rather than flipping the phase.
"""
from helpers import process as P
from representations.base import FourierRepresentation


class MagPhase(FourierRepresentation):
    name = "magphase"
    summary = "|F|, wrapped phase"
    channel_names = tuple(f"{k}_{c}" for k in ("mag", "phase") for c in "RGB")

    def to_channels(self, spec):
        mag, phase = P.abs_angle(spec)
        return P.cat_channels([self._slog(mag), phase], mag)

    def from_channels(self, channels):
        a, b = P.split_channels(channels)
        return P.polar(P.clamp_min0(self._slog_inv(a)), b)

    def diff_channels(self, clean_spec, rain_spec):
        mag_c, ph_c = P.abs_angle(clean_spec)
        mag_r, ph_r = P.abs_angle(rain_spec)
        return P.cat_channels([self._slog(mag_c - mag_r), P.wrap_phase(ph_c - ph_r)], mag_c)

    def add_diff(self, channels, rain_spec):
        d_mag, d_phase = P.split_channels(channels)
        mag_r, ph_r = P.abs_angle(rain_spec)
        return P.polar(P.clamp_min0(mag_r + self._slog_inv(d_mag)), ph_r + d_phase)
