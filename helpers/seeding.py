"""Seeds derived from names and numbers, identical on every run and machine, and the one design
for drawing random numbers a sample at a time.

    hash_seed("noise", seed, position)             # a training sample's seed
    noise = SampleGenerators(seeds, device)         # one stream per sample, on the device
    t, eps = noise.randint(1000), noise.randn((6, 64, 64))       # (B,), (B, 6, 64, 64)
    noise = batch_generator(generator, batch, device)   # a torch.Generator (or None) for a whole
                                                        # batch, with the same three methods
    noise.host_uniforms()     # one host float per sample: a choice the host knows unread
"""
import hashlib
import random

import torch


def hash_seed(*parts):
    """A 56-bit seed that is a pure function of `parts` (their repr), e.g.
    hash_seed(seed, step, rank) for a training step, hash_seed("derain", seed, index) for an
    image; Python's hash() would change with PYTHONHASHSEED."""
    return int.from_bytes(hashlib.sha256(repr(parts).encode()).digest()[:7], "little")


def make_generator(seed, device):
    """A torch.Generator on `device` seeded with the host integer `seed` (no device read)."""
    return torch.Generator(device=device).manual_seed(int(seed))


class SampleGenerators:
    """One random stream per sample, in the manner of EDM's StackedRandomGenerator: sample i
    draws from its own generator on `device`, seeded with seeds[i], so what a sample draws does
    not depend on the batch, micro-batch or rank it lands in, nor on how windows are batched.
    The seeds are host integers, so nothing is read back from the device; the generators are
    made at the first draw (a bridge that draws nothing makes none). Each method returns a
    (B, ...) tensor on `device` whose row i comes from generator i, drawn in call order."""

    def __init__(self, seeds, device):
        self.seeds, self.device = [int(s) for s in seeds], torch.device(device)
        self._generators = self._host = None

    def __len__(self):
        return len(self.seeds)

    @property
    def generators(self):
        if self._generators is None:
            self._generators = [make_generator(s, self.device) for s in self.seeds]
        return self._generators

    def randn(self, shape, dtype=torch.float32):
        return torch.stack([torch.randn(tuple(shape), generator=g, device=self.device,
                                        dtype=dtype) for g in self.generators])

    def rand(self):
        return torch.cat([torch.rand(1, generator=g, device=self.device)
                          for g in self.generators])

    def randint(self, high):
        return torch.cat([torch.randint(0, int(high), (1,), generator=g, device=self.device)
                          for g in self.generators])

    def host_uniforms(self):
        """One uniform in [0, 1) per sample as host floats, for a choice the host must know
        without reading the device (which draws the bridge sends to the rainy end on an
        accelerator): from a Python random.Random per sample, seeded with its seed and made at
        the first call, so it is plain host arithmetic (no tensor, no device)."""
        if self._host is None:
            self._host = [random.Random(s) for s in self.seeds]
        return [r.random() for r in self._host]


class BatchGenerator:
    """The same three methods from one generator (or torch's global one, for None) drawing
    for the whole batch of `batch` samples at once."""

    def __init__(self, generator, batch, device):
        self.generator, self.batch, self.device = generator, int(batch), torch.device(device)

    def __len__(self):
        return self.batch

    def randn(self, shape, dtype=torch.float32):
        return torch.randn((self.batch, *shape), generator=self.generator, device=self.device,
                           dtype=dtype)

    def rand(self):
        return torch.rand(self.batch, generator=self.generator, device=self.device)

    def randint(self, high):
        return torch.randint(0, int(high), (self.batch,), generator=self.generator,
                             device=self.device)

    def host_uniforms(self):
        """One uniform per sample as host floats, from Python's global generator (seeded by
        the run: ddpm_conditional.setup)."""
        return [random.random() for _ in range(self.batch)]


def batch_generator(generator, batch, device):
    """`generator` as an object with randn / rand / randint for `batch` samples: a
    SampleGenerators as it is, a torch.Generator or None for the whole batch."""
    if isinstance(generator, (SampleGenerators, BatchGenerator)):
        if len(generator) != batch:
            raise ValueError(f"{len(generator)} per-sample generators for a batch of {batch}")
        return generator
    return BatchGenerator(generator, batch, device)
