"""Data: the codec between image pairs and model tensors, FFTDataset, and get_data().

The codec is the one place that knows how a (clean, rainy) pair becomes the model's (target,
condition) tensors and how a generated target becomes an image again; the dataset, the training
script and derain.py all go through it, and the checkpoint stores its state, so sampling uses the
exact normalisation the model was trained with.

    domain "fft"   : target = normalised spectrum of the change clean - rain (or of the clean
                     image), condition = normalised spectrum of the rainy image, 6 channels each
                     (see helpers/process.py for the representations).
    domain "pixel" : the same network in image space, the honest reference: target = clean - rain
                     (or 2 clean - 1), condition = 2 rain - 1, 3 channels each.
"""
import os

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from helpers import process as P
from helpers.statistics import (channel_keys, check_settings, load_pair, load_statistics, pad_to,
                               read_pairs)

DOMAINS = ("fft", "pixel")
NORMS = ("perfreq_std", "perfreq", "global_std", "global")
STD_SPAN = 2.0  # the *_std norms map mean -+ 2 std to [-1, 1]: data of std 0.5, like images
COND_CLIP = 8.0  # a new photo may fall outside the training range; bound what the network sees


class Codec:
    """Pair of images <-> normalised (target, condition) arrays, for one set of settings."""

    def __init__(self, domain="fft", representation="magphase", target="diff", norm="perfreq_std",
                 crop=64, stats=None, log=True):
        if domain not in DOMAINS:
            raise ValueError(f"unknown domain {domain!r}; choose one of {', '.join(DOMAINS)}")
        if norm not in NORMS:
            raise ValueError(f"unknown norm {norm!r}; choose one of {', '.join(NORMS)}")
        P._check(representation, P.REPRESENTATIONS, "representation")
        P._check(target, P.TARGETS, "target")
        self.domain, self.representation, self.target = domain, representation, target
        self.norm, self.crop, self.log = norm, int(crop), bool(log)
        self.channels = 6 if domain == "fft" else 3
        self.ranges = None  # {"target": (lo, hi), "cond": (lo, hi)}, float64 numpy
        if domain == "fft":
            if stats is None:
                raise ValueError("the fft domain needs statistics: run get_fft_statistics_log.py")
            self.ranges = self._ranges(stats)

    def _ranges(self, stats):
        if "settings" in stats:  # a full statistics file; a checkpoint's state has only ranges
            check_settings(stats, self.representation, self.crop, self.log,
                           source=stats.get("path", "statistics"))
        if "ranges" in stats:
            return {k: tuple(np.asarray(a, dtype=np.float64) for a in v)
                    for k, v in stats["ranges"].items()}
        # Every norm is the original min/max map 2 (x - lo) / (hi - lo) - 1; the *_std norms take
        # lo, hi = mean -+ 2 std. A heavy-tailed spectrum squeezed by its extremes (min/max) has
        # most of its values in a sliver of [-1, 1], which the diffusion noise drowns at once;
        # mean/std per frequency gives every coefficient the same spread instead.
        part = {"target": self.target, "cond": "rain"}
        ranges = {}
        for role, name in part.items():
            if self.norm.startswith("perfreq"):
                freq = stats.get("per_frequency")
                if not isinstance(freq, dict):
                    raise ValueError("per-frequency statistics missing (computed with --crop 0?); "
                                     "recompute with get_fft_statistics_log.py --crop "
                                     f"{self.crop}, or use --norm global")
                get = lambda stat: np.asarray(freq[f"{name}_{stat}"], np.float64)
            else:
                keys = channel_keys(self.representation)
                get = lambda stat: np.array([stats[name][f"{k}_{stat}"] for k in keys],
                                            np.float64)[:, None, None]
            if self.norm.endswith("_std"):
                mean, std = get("mean"), get("std")
                lo, hi = mean - STD_SPAN * std, mean + STD_SPAN * std
            else:
                lo, hi = get("min"), get("max")
            ranges[role] = (lo, hi)
        return ranges

    # ------------------------------------------------------------ state for the checkpoint
    def state(self):
        s = {"domain": self.domain, "representation": self.representation, "target": self.target,
             "norm": self.norm, "crop": self.crop, "log": self.log}
        if self.ranges:
            s["ranges"] = {k: [torch.from_numpy(np.ascontiguousarray(a)) for a in v]
                           for k, v in self.ranges.items()}
        return s

    @classmethod
    def from_state(cls, s):
        stats = {"ranges": {k: [np.asarray(a) for a in v] for k, v in s["ranges"].items()}} \
            if s.get("ranges") else None
        return cls(s["domain"], s["representation"], s["target"], s["norm"], s["crop"], stats,
                   s["log"])

    # ------------------------------------------------------------ images <-> model arrays
    def encode(self, clean, rain):
        """(..., 3, h, w) float images in [0, 1] -> (target, condition), normalised, same kind
        (numpy/torch) and float64 if given float64. `clean` may be None (condition only)."""
        if self.domain == "pixel":
            cond = 2 * rain - 1
            if clean is None:
                return None, cond
            return (clean - rain if self.target == "diff" else 2 * clean - 1), cond
        rain_spec = P.fft_image(rain)
        cond = P.complex_to_channels(rain_spec, self.representation, self.log)
        cond = _clip(P.normalize(cond, *self._as(cond, "cond")), COND_CLIP)
        if clean is None:
            return None, cond
        tgt = P.encode_target(P.fft_image(clean), rain_spec, self.representation, self.target,
                              self.log)
        return P.normalize(tgt, *self._as(tgt, "target")), cond

    def decode(self, target_n, rain):
        """Generated normalised target (..., C, h, w) and the rainy image (..., 3, h, w) -> the
        derained image (..., 3, h, w), not clipped. Computed in float64."""
        if torch.is_tensor(target_n):
            target_n, rain = target_n.double(), rain.double()
        else:
            target_n, rain = np.asarray(target_n, np.float64), np.asarray(rain, np.float64)
        if self.domain == "pixel":
            return rain + target_n if self.target == "diff" else (target_n + 1) / 2
        tgt = P.denormalize(target_n, *self._as(target_n, "target"))
        clean_spec = P.decode_target(tgt, P.fft_image(rain), self.representation, self.target,
                                     self.log)
        return P.ifft_image(clean_spec)

    def _as(self, like, role):
        lo, hi = self.ranges[role]
        if lo.shape[-1] > 1 and lo.shape[-2:] != tuple(like.shape[-2:]):
            raise ValueError(f"per-frequency statistics are for {lo.shape[-1]}x{lo.shape[-2]} "
                             f"windows, got {like.shape[-1]}x{like.shape[-2]}")
        if torch.is_tensor(like):
            return (torch.as_tensor(lo, dtype=like.dtype, device=like.device),
                    torch.as_tensor(hi, dtype=like.dtype, device=like.device))
        return lo, hi


def _clip(x, c):
    return torch.clamp(x, -c, c) if torch.is_tensor(x) else np.clip(x, -c, c)


class FFTDataset(Dataset):
    """Pairs from a CSV -> float32 (target, condition), each (C, crop, crop), computed on the fly.

    No cache of spectra on disk: the original's float64 .npz files would take about 60 GB for
    2,800 pairs, while an FFT of a crop costs well under a millisecond. In training the same
    random crop and left-right flip are applied to both images of a pair; otherwise the
    centre crop is taken, so validation losses are comparable between runs."""

    def __init__(self, csv, stats=None, crop=64, representation="magphase", target="diff",
                 norm="perfreq_std", domain="fft", train=True, log=True, codec=None):
        self.pairs = read_pairs(csv)
        if not self.pairs:
            raise ValueError(f"{csv}: no pairs")
        if domain == "pixel":
            stats = None  # the pixel domain needs no statistics
        elif isinstance(stats, (str, os.PathLike)):
            stats = load_statistics(stats)
        self.codec = codec or Codec(domain, representation, target, norm, crop, stats, log)
        self.crop, self.train = int(crop), train

    def __len__(self):
        return len(self.pairs)

    def __getitem__(self, item):
        # item: an index, or (index, seed) from StreamSampler, which fixes the crop and flip
        i, aug_seed = item if isinstance(item, tuple) else (item, None)
        rng = np.random.default_rng(None if aug_seed is None else list(_flat_ints(aug_seed)))
        clean, rain = load_pair(*self.pairs[i])  # float64 (3, H, W); ImageError names the file
        clean, rain = pad_to(clean, self.crop), pad_to(rain, self.crop)
        _, h, w = clean.shape
        if self.train:
            y, x = rng.integers(0, h - self.crop + 1), rng.integers(0, w - self.crop + 1)
        else:
            y, x = (h - self.crop) // 2, (w - self.crop) // 2
        clean = clean[:, y:y + self.crop, x:x + self.crop]
        rain = rain[:, y:y + self.crop, x:x + self.crop]
        if self.train and rng.random() < 0.5:
            clean, rain = clean[..., ::-1], rain[..., ::-1]
        target, cond = self.codec.encode(clean, rain)
        return (torch.from_numpy(np.ascontiguousarray(target, np.float32)),
                torch.from_numpy(np.ascontiguousarray(cond, np.float32)))


def _flat_ints(seed):
    for v in seed:
        yield int(v) % 2 ** 63


class StreamSampler(torch.utils.data.Sampler):
    """An endless, resumable stream of (index, augmentation seed) for training.

    Shards like DistributedSampler (rank r takes every world-th item of a shared permutation),
    but the permutation of epoch e and the crop/flip of the k-th item depend only on (seed, e, k),
    and the stream can start at any position: a resumed run sees exactly the samples the
    uninterrupted run would have seen, whatever the number of loader workers."""

    def __init__(self, n, batch_size, seed=0, start_batch=0, rank=0, world=1):
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self.start = start_batch * batch_size  # position in this rank's stream
        self.rank, self.world = rank, world

    def __iter__(self):
        per_epoch = self.n // self.world or 1
        epoch, pos = divmod(self.start, per_epoch)
        while True:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            perm = torch.randperm(self.n, generator=g).tolist()
            mine = (perm * self.world)[self.rank::self.world][:per_epoch]
            for k in range(pos, per_epoch):
                yield mine[k], (self.seed, epoch, self.rank, k)
            epoch, pos = epoch + 1, 0

    def __len__(self):  # endless; DataLoader only needs this for len(loader)
        return 2 ** 62


def get_data(args, train=True, codec=None, start=0, seed=0):
    """DataLoader over args['csv'] (or args['val_csv'] when train is False).

    `args` is the resolved config (a dict or namespace) with csv, stats, crop, representation,
    target, norm, domain, batch_size, num_workers. In training the loader is an endless stream
    starting at micro-batch `start` (see StreamSampler), sharded over the ranks when
    torch.distributed is initialised; for validation a DistributedSampler shards one pass."""
    a = args if isinstance(args, dict) else vars(args)
    ds = FFTDataset(a["csv"] if train else a["val_csv"], a.get("stats"), a["crop"],
                    a["representation"], a["target"], a["norm"], a["domain"], train=train,
                    codec=codec)
    distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
    rank = torch.distributed.get_rank() if distributed else 0
    world = torch.distributed.get_world_size() if distributed else 1
    if train:
        sampler = StreamSampler(len(ds), a["batch_size"], seed, start, rank, world)
    elif distributed:
        sampler = torch.utils.data.distributed.DistributedSampler(ds, shuffle=False)
    else:
        sampler = None
    workers = int(a.get("num_workers", 2))
    return DataLoader(ds, batch_size=a["batch_size"], sampler=sampler, num_workers=workers,
                      pin_memory=torch.cuda.is_available(), persistent_workers=workers > 0,
                      drop_last=False)
