"""Data: FFTDataset (pairs CSV -> batches of windows encoded by a representation), the resumable
training stream, and get_data().

The dataset knows nothing of spectra: each (clean, rainy) window pair goes through the
representation (representations/), which the training script, derain.py and the checkpoint share,
so sampling uses the exact normalisation the model was trained with. A batch is a dict:

    target (B, C, h', w')  the normalised target (what the diffusion generates)
    cond   (B, C, h', w')  the normalised condition (the rainy window, encoded)
    rain, clean (B, 3, crop, crop)  the windows themselves, for a loss measured in image space
"""
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from helpers.seeding import hash_seed
from helpers.statistics import load_pair, read_pairs
from sampling import pad_to


class FFTDataset(Dataset):
    """Pairs from a CSV -> float32 batch items (see the module docstring), computed on the fly.

    No cache of spectra on disk: the original's float64 .npz files would take about 60 GB for
    2,800 pairs, while an FFT of a crop costs well under a millisecond. In training the same
    random crop and left-right flip are applied to both images of a pair; otherwise the
    centre crop is taken, so validation losses are comparable between runs."""

    def __init__(self, csv, representation, train=True):
        self.pairs = read_pairs(csv)
        if not self.pairs:
            raise ValueError(f"{csv}: no pairs")
        self.rep, self.crop, self.train = representation, representation.crop, train

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
        target, cond = self.rep.encode(clean, rain)
        f32 = lambda a: torch.from_numpy(np.ascontiguousarray(a, np.float32))
        return {"target": f32(target), "cond": f32(cond), "rain": f32(rain), "clean": f32(clean)}


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
            g = torch.Generator().manual_seed(hash_seed("epoch", self.seed, epoch))
            perm = torch.randperm(self.n, generator=g).tolist()
            mine = (perm * self.world)[self.rank::self.world][:per_epoch]
            for k in range(pos, per_epoch):
                yield mine[k], (self.seed, epoch, self.rank, k)
            epoch, pos = epoch + 1, 0

    def __len__(self):  # endless; DataLoader only needs this for len(loader)
        return 2 ** 62


def get_data(cfg, representation, train=True, start=0, seed=0):
    """DataLoader over cfg['csv'] (or cfg['val_csv'] when train is False), cfg being the
    resolved config (batch_size, num_workers). In training the loader is an endless stream
    starting at micro-batch `start` (see StreamSampler), sharded over the ranks when
    torch.distributed is initialised; for validation a DistributedSampler shards one pass."""
    ds = FFTDataset(cfg["csv"] if train else cfg["val_csv"], representation, train=train)
    distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
    rank = torch.distributed.get_rank() if distributed else 0
    world = torch.distributed.get_world_size() if distributed else 1
    if train:
        sampler = StreamSampler(len(ds), cfg["batch_size"], seed, start, rank, world)
    elif distributed:
        sampler = torch.utils.data.distributed.DistributedSampler(ds, shuffle=False)
    else:
        sampler = None
    workers = int(cfg.get("num_workers", 2))
    return DataLoader(ds, batch_size=cfg["batch_size"], sampler=sampler, num_workers=workers,
                      pin_memory=torch.cuda.is_available(), persistent_workers=workers > 0,
                      drop_last=False)
