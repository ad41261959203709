"""What every representation shares: the interface, the normalisation and the checkpoint state.

A representation is the one place that knows how a (clean, rainy) pair of image windows becomes
the model's (target, condition) tensors and how a generated target becomes an image again:

    rep.channels                  channels of the target and of the condition
    rep.shape(h, w)               (channels, h', w') of the encoding of an h x w window
    rep.extra_inputs(h', w')      constant input channels for the network (or None), e.g. the
                                  frequency coordinates of a spectrum; rep.extra_channels of them
    rep.parts(clean, rain)        unnormalised encodings {"rain", "diff", "clean"}: what the
                                  statistics scripts measure
    rep.encode(clean, rain)       -> (target, condition), normalised; clean may be None
    rep.decode(target, rain)      -> the derained image; differentiable in torch (a loss in image
                                  space backpropagates through it)
    rep.from_target(raw, rain)    the same from an unnormalised target (decode = denormalise,
                                  then this)
    rep.cond_to_image(cond)       the rainy window back from its encoding (exact unless the
                                  condition was clipped)
    rep.state() / from_state()    everything sampling needs, stored in the checkpoint

Images are (..., 3, H, W) floats in [0, 1], numpy or torch; every method returns the kind it is
given. A subclass of FourierRepresentation only says how an image becomes complex coefficients
and channels; normalisation, statistics settings and the condition clip are shared here.
"""
import numpy as np
import torch

from helpers import process as P
from helpers.errors import ConfigError, StatisticsError

TARGETS = ("diff", "clean")
NORMS = ("perfreq_std", "perfreq", "global_std", "global", "scalar_std", "partial_std")
STD_SPAN = 2.0  # the *_std norms map mean -+ 2 std to [-1, 1]: data of std 0.5, like images
COND_CLIP = 8.0  # a new photo may fall outside the training range; bound what the network sees
STATS_VERSION = 1


def statistics_script(log):
    """The script that computes statistics with or without the signed log."""
    return "get_fft_statistics_log.py" if log else "get_fft_statistics.py"


def check_choice(value, allowed, name):
    if value not in allowed:
        raise ConfigError(f"unknown {name} {value!r}; choose one of {', '.join(allowed)}")


class Representation(torch.nn.Module):
    """The interface (see the module docstring). Subclasses set `name`, `channel_names` and the
    transforms; `domain` names the run directory ('fft' or 'pixel').

    A module only to hold the normalisation as buffers (target_lo, target_hi, cond_lo,
    cond_hi; float64, not persistent: the checkpoint stores them in state()): `.to(device)` moves
    them once, and the torch path reads them where its tensors live, never copying from the
    host in a training step or a sampling loop. The numpy path (data loading, statistics) reads
    the same numbers as numpy arrays (`ranges`)."""

    name = ""
    summary = ""  # a few words for the pipeline diagram
    domain = "fft"
    channel_names = ()  # one per channel; statistics keys are "<channel name>_<stat>"
    needs_statistics = True
    extra_channels = 0
    options = ()  # settings of its own, config keys (e.g. blockdct's "block")

    def __init__(self, crop, log, target=None, norm=None, norm_gamma=None, stats=None,
                 **options):
        """crop, log and the class's options say how a window becomes channels; target, norm,
        norm_gamma and stats how the channels are normalised. A representation made without a
        target and a norm (representations.make_transform) only transforms: the statistics
        scripts measure what it encodes, it cannot encode a training pair."""
        super().__init__()
        if target is not None:
            check_choice(target, TARGETS, "target")
        if norm is not None:
            check_choice(norm, NORMS, "norm")
        if norm == "partial_std" and norm_gamma is None:
            raise ConfigError("--norm partial_std needs --norm-gamma")
        self.target, self.norm, self.crop, self.log = target, norm, int(crop), bool(log)
        self.norm_gamma = None if norm_gamma is None else float(norm_gamma)
        unknown, missing = set(options) - set(self.options), set(self.options) - set(options)
        if unknown or missing:
            raise ConfigError(f"the {self.name} representation takes the option(s) "
                              f"{list(self.options)}, got {sorted(options)}")
        self.opts = dict(options)
        self.ranges = None  # {"target": (lo, hi), "cond": (lo, hi)}, float64 numpy
        if self.needs_statistics and stats is not None:
            if target is None or norm is None:
                raise ConfigError("normalisation statistics need a target and a norm")
            self.ranges = self._ranges(stats)
            for role, (lo, hi) in self.ranges.items():
                self.register_buffer(f"{role}_lo", torch.from_numpy(np.array(lo)), persistent=False)
                self.register_buffer(f"{role}_hi", torch.from_numpy(np.array(hi)), persistent=False)

    @property
    def channels(self):
        return len(self.channel_names)

    def shape(self, h, w):
        return self.channels, h, w

    def extra_inputs(self, h, w, device=None, dtype=torch.float32):
        return None

    def __repr__(self):
        return (f"{type(self).__name__}(target={self.target!r}, norm={self.norm!r}, "
                f"crop={self.crop}, log={self.log})")

    # ------------------------------------------------------------ statistics
    def stats_settings(self):
        """What a statistics file depends on; a file computed for other settings is refused."""
        return {"representation": self.name, "crop": self.crop, "log": self.log,
                "fft_norm": P.FFT_NORM, "phase_wrapped": True, "version": STATS_VERSION,
                **self.opts}

    def check_settings(self, stats, source="statistics"):
        """Raise ValueError, saying which script to run, if `stats` were made for other settings."""
        want, have = self.stats_settings(), stats.get("settings", {})
        diffs = [f"{k}={have.get(k)!r} (need {v!r})" for k, v in want.items() if have.get(k) != v]
        if diffs:
            opts = "".join(f" --{k.replace('_', '-')} {v}" for k, v in self.opts.items())
            raise StatisticsError(
                f"{source}: computed for other settings: {', '.join(diffs)}. Recompute with: "
                f"python {statistics_script(self.log)} --csv PAIRS.csv --out STATS.json "
                f"--representation {self.name} --crop {self.crop}{opts}")

    def _ranges(self, stats):
        if "settings" in stats:  # a full statistics file; a checkpoint's state has only ranges
            self.check_settings(stats, source=stats.get("path", "statistics"))
        if "ranges" in stats:
            return {k: tuple(np.asarray(a, dtype=np.float64) for a in v)
                    for k, v in stats["ranges"].items()}
        # Every norm is the original min/max map 2 (x - lo) / (hi - lo) - 1; the *_std norms take
        # lo, hi = mean -+ 2 std. A heavy-tailed spectrum squeezed by its extremes (min/max) has
        # most of its values in a sliver of [-1, 1], which the diffusion noise drowns at once;
        # mean/std per frequency gives every coefficient the same spread instead (with white
        # noise: every frequency loses its signal at the same rate, "EqualSNR"). scalar_std uses
        # one scale for everything (per-frequency means): the noise then drowns the weak high
        # frequencies first, as in pixel diffusion; partial_std scales by std_f^gamma times the
        # overall std^(1 - gamma), between the two.
        if self.norm in ("scalar_std", "partial_std"):
            return self._scaled_ranges(stats)
        ranges = {}
        for role, part in (("target", self.target), ("cond", "rain")):
            if self.norm.startswith("perfreq"):
                freq = stats.get("per_frequency")
                if not isinstance(freq, dict):
                    raise StatisticsError(
                        "per-frequency statistics missing (computed with --crop 0?); recompute "
                        f"with {statistics_script(self.log)} --crop {self.crop}, or use --norm "
                        "global")
                get = lambda stat: np.asarray(freq[f"{part}_{stat}"], np.float64)
            else:
                get = lambda stat: np.array([stats[part][f"{k}_{stat}"] for k in
                                             self.channel_names], np.float64)[:, None, None]
            if self.norm.endswith("_std"):
                mean, std = get("mean"), get("std")
                ranges[role] = (mean - STD_SPAN * std, mean + STD_SPAN * std)
            else:
                ranges[role] = (get("min"), get("max"))
        return ranges

    def _scaled_ranges(self, stats):
        freq = stats.get("per_frequency")
        if not isinstance(freq, dict):
            raise StatisticsError(f"--norm {self.norm} needs per-frequency statistics; recompute "
                                  f"with {statistics_script(self.log)} --crop {self.crop}")
        ranges = {}
        for role, part in (("target", self.target), ("cond", "rain")):
            mean = np.asarray(freq[f"{part}_mean"], np.float64)
            std = np.asarray(freq[f"{part}_std"], np.float64)
            overall = np.sqrt(np.mean(std ** 2))  # the RMS of the per-frequency stds
            gamma = 0.0 if self.norm == "scalar_std" else self.norm_gamma
            scale = std ** gamma * overall ** (1 - gamma)
            ranges[role] = (mean - STD_SPAN * scale, mean + STD_SPAN * scale)
        return ranges

    def _range(self, like, role):
        if self.ranges is None:
            raise StatisticsError(f"the {self.name} representation needs statistics: run "
                                  f"{statistics_script(self.log)}")
        lo, hi = self.ranges[role]
        if lo.shape[-1] > 1 and lo.shape[-2:] != tuple(like.shape[-2:]):
            raise StatisticsError(f"per-frequency statistics are for {lo.shape[-1]}x{lo.shape[-2]} "
                             f"coefficients, got {like.shape[-1]}x{like.shape[-2]}")
        if torch.is_tensor(like):  # the buffers, wherever .to() put them (never a host copy)
            return (getattr(self, f"{role}_lo").to(like.dtype),
                    getattr(self, f"{role}_hi").to(like.dtype))
        return lo, hi

    # ------------------------------------------------------------ state for the checkpoint
    def state(self):
        s = {"name": self.name, "target": self.target, "norm": self.norm, "crop": self.crop,
             "log": self.log, "norm_gamma": self.norm_gamma, "options": dict(self.opts)}
        if self.ranges:
            s["ranges"] = {k: [torch.from_numpy(np.ascontiguousarray(a)) for a in v]
                           for k, v in self.ranges.items()}
        return s

    @classmethod
    def from_state(cls, s):
        stats = {"ranges": {k: [np.asarray(a) for a in v] for k, v in s["ranges"].items()}} \
            if s.get("ranges") else None
        return cls(s["crop"], s["log"], s["target"], s["norm"], s["norm_gamma"], stats,
                   **s["options"])


class FourierRepresentation(Representation):
    """A spectrum of each colour channel as channels, normalised with the dataset's statistics.

    Subclasses define transform (image -> complex coefficients), inverse (coefficients and the
    image size -> image), to_channels / from_channels (coefficients <-> real channels, with the
    signed log when self.log) and, when the difference is not a plain subtraction of channels,
    diff_channels / add_diff."""

    extra_channels = 3  # (fy, fx, radius): a convolution is translation-equivariant, a spectrum
    # is not (a coefficient's position is its frequency)

    def transform(self, image):
        return P.fft_image(image)

    def inverse(self, spec, size):
        return P.ifft_image(spec)

    def extra_inputs(self, h, w, device=None, dtype=torch.float32):
        return P.centred_freq_coords(h, w, device=device, dtype=dtype)

    @property
    def _slog(self):
        return P.signed_log_scale if self.log else P.identity

    @property
    def _slog_inv(self):
        return P.signed_log_inverse if self.log else P.identity

    def diff_channels(self, clean_spec, rain_spec):
        """The change clean - rain as channels (default: the channels of C - R, linear)."""
        return self.to_channels(clean_spec - rain_spec)

    def add_diff(self, channels, rain_spec):
        """Inverse of diff_channels: the clean coefficients."""
        return rain_spec + self.from_channels(channels)

    # ------------------------------------------------------------ the interface
    def parts(self, clean, rain):
        c, r = self.transform(clean), self.transform(rain)
        return {"rain": self.to_channels(r), "diff": self.diff_channels(c, r),
                "clean": self.to_channels(c)}

    def condition(self, rain_spec, clip=True):
        """The network's condition from the rainy windows' coefficients: their channels,
        normalised by the statistics and, unless clip is False, bounded at +-COND_CLIP
        (tools.cond_clip counts what the bound removes)."""
        cond = self.to_channels(rain_spec)
        cond = P.normalize(cond, *self._range(cond, "cond"))
        return P.clip(cond, COND_CLIP) if clip else cond

    def encode(self, clean, rain):
        rain_spec = self.transform(rain)
        cond = self.condition(rain_spec)
        if clean is None:
            return None, cond
        clean_spec = self.transform(clean)
        tgt = self.diff_channels(clean_spec, rain_spec) if self.target == "diff" \
            else self.to_channels(clean_spec)
        return P.normalize(tgt, *self._range(tgt, "target")), cond

    def decode(self, target_n, rain):
        return self.from_target(P.denormalize(target_n, *self._range(target_n, "target")), rain)

    def cond_to_image(self, cond, size=None):
        """The rainy window of an encoded condition; size: the window's (h, w), by default the
        training window when the encoding has its shape, else the encoding's own size."""
        spec = self.from_channels(P.denormalize(cond, *self._range(cond, "cond")))
        if size is None:
            full = self.shape(self.crop, self.crop)[1:] == tuple(cond.shape[-2:])
            size = (self.crop, self.crop) if full else tuple(cond.shape[-2:])
        return self.inverse(spec, tuple(size))

    def from_target(self, tgt, rain):
        spec = self.add_diff(tgt, self.transform(rain)) if self.target == "diff" \
            else self.from_channels(tgt)
        return self.inverse(spec, tuple(rain.shape[-2:]))
