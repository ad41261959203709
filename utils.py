"""Data: FFTDataset (pairs CSV -> batches of windows encoded by a representation), the resumable
training stream, and get_data().

The dataset knows nothing of spectra: each (clean, rainy) window pair goes through the
representation (representations/), which the training script, derain.py and the checkpoint share,
so sampling uses the exact normalisation the model was trained with. A batch is a dict:

    target (B, C, h', w')  the normalised target (what the diffusion generates)
    cond   (B, C, h', w')  the normalised condition (the rainy window, encoded)
    rain, clean (B, 3, crop, crop)  the windows themselves, for a loss measured in image space
    position (B,)          each sample's place in the run's stream (-1 outside training): its
                           crop, flip and diffusion noise derive from it (see StreamSampler)
"""
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from helpers.seeding import hash_seed
from helpers.errors import PairsError
from helpers.pairs import load_pair, read_pairs
from helpers.tiling import pad_to


class FFTDataset(Dataset):
    """Pairs from a CSV -> float32 batch items (see the module docstring), computed on the fly.

    No cache of spectra on disk: the original's float64 .npz files would take about 60 GB for
    2,800 pairs, while an FFT of a crop costs well under a millisecond. In training the same
    random crop and left-right flip are applied to both images of a pair; otherwise the
    centre crop is taken, so validation losses are comparable between runs."""

    def __init__(self, csv, representation, train=True, seed=0):
        self.pairs = read_pairs(csv)
        if not self.pairs:
            raise PairsError(f"{csv}: no pairs")
        self.rep, self.crop, self.train = representation, representation.crop, train
        self.seed = seed

    def __len__(self):
        return len(self.pairs)

    def __getitem__(self, item):
        # item: an index, or (index, global position) from StreamSampler, which fixes the crop
        # and flip (and, in the loss, the noise) of that sample
        i, position = item if isinstance(item, tuple) else (item, -1)
        rng = np.random.default_rng(None if position < 0 else
                                    hash_seed("augment", self.seed, position))
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
        return {"target": f32(target), "cond": f32(cond), "rain": f32(rain), "clean": f32(clean),
                "position": torch.tensor(position)}


class StreamSampler(torch.utils.data.Sampler):
    """An endless, resumable stream of (index, global position) for training.

    The run is one sequence of samples, position 0, 1, 2, ...: position p is item
    perm_e[p mod n] of the permutation of epoch e = p div n, a function of (seed, e) alone, and
    its crop, flip and noise are functions of (seed, p). Micro-batch m of the whole job is
    positions [m W B, (m + 1) W B) for W ranks of B samples; rank r takes its r-th B of them. So
    W ranks of B samples see exactly what one process of W B samples sees (and grad_accum
    micro-batches what one larger batch sees), and the stream can start at any micro-batch: a
    resumed run sees the samples the uninterrupted one would have, whatever the number of
    loader workers."""

    def __init__(self, n, batch_size, seed=0, start_batch=0, rank=0, world=1):
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self.start_batch = start_batch  # this rank's micro-batches already consumed
        self.rank, self.world = rank, world

    def position(self, k):
        """Global position of this rank's k-th sample."""
        b = self.batch_size
        return (k // b) * self.world * b + self.rank * b + k % b

    def __iter__(self):
        k, epoch, perm = self.start_batch * self.batch_size, None, None
        while True:
            p = self.position(k)
            e = p // self.n
            if e != epoch:
                g = torch.Generator().manual_seed(hash_seed("epoch", self.seed, e))
                epoch, perm = e, torch.randperm(self.n, generator=g).tolist()
            yield perm[p % self.n], p
            k += 1

    def __len__(self):  # endless; DataLoader only needs this for len(loader)
        return 2 ** 62


def get_data(cfg, representation, train=True, start=0, seed=0):
    """DataLoader over cfg['csv'] (or cfg['val_csv'] when train is False), cfg being the
    resolved config (batch_size, num_workers). In training the loader is an endless stream
    starting at micro-batch `start` (see StreamSampler), sharded over the ranks when
    torch.distributed is initialised; for validation a DistributedSampler shards one pass."""
    ds = FFTDataset(cfg["csv"] if train else cfg["val_csv"], representation, train=train,
                    seed=seed)
    distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
    rank = torch.distributed.get_rank() if distributed else 0
    world = torch.distributed.get_world_size() if distributed else 1
    if train:
        sampler = StreamSampler(len(ds), cfg["batch_size"], seed, start, rank, world)
    elif distributed:
        sampler = torch.utils.data.distributed.DistributedSampler(ds, shuffle=False)
    else:
        sampler = None
    workers = int(cfg["num_workers"])
    return DataLoader(ds, batch_size=cfg["batch_size"], sampler=sampler, num_workers=workers,
                      pin_memory=torch.cuda.is_available(), persistent_workers=workers > 0,
                      drop_last=False)
