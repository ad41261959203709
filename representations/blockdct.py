"""blockdct: block spectra, the coefficients of each b x b block as channels on a b-times smaller
grid (`--representation blockdct --block 8`).

A window of crop x crop pixels becomes (3 b^2, crop / b, crop / b): the orthonormal 2-D DCT-II of
every b x b block of each colour channel, coefficient (k, l) of colour c in channel
c b^2 + k b + l, with the signed log (or linear with log=False); target "diff": the coefficients
of clean - rain. Frequencies become channels and space stays space, so a 3x3 convolution mixes
neighbouring blocks of the same image region (the locality DCTdiff and WaveDM keep) and the
network works on a grid b times smaller (cheaper steps). The DCT rather than the FFT of a block:
real coefficients, b^2 per block instead of 2 b^2 of which half are redundant, and no jump at
the block's edges. Orthonormal, so Parseval holds as for the global FFT. No extra inputs: a
coefficient's frequency is its channel. `crop` must be a multiple of `block`.
"""
import math

import numpy as np
import torch

from helpers import process as P
from helpers.errors import ConfigError
from representations.base import FourierRepresentation


def dct_matrix(b):
    """(b, b) orthonormal DCT-II: D[k, n] = a_k cos(pi (2n + 1) k / 2b)."""
    n = np.arange(b)
    d = np.cos(np.pi * (2 * n[None, :] + 1) * n[:, None] / (2 * b)) * math.sqrt(2 / b)
    d[0] /= math.sqrt(2)
    return d


class BlockDCT(FourierRepresentation):
    name = "blockdct"
    summary = "b\u00d7b block DCT"
    extra_channels = 0
    options = ("block",)

    def __init__(self, crop, log, target=None, norm=None, norm_gamma=None, stats=None, *,
                 block):
        b = self.block = int(block)
        if b < 2 or int(crop) % b:
            raise ConfigError(f"blockdct: --crop {crop} must be a multiple of --block {b} (>= 2)")
        # set before the base class reads the statistics under these names
        self.channel_names = tuple(f"dct{k}_{l}_{c}" for c in "RGB" for k in range(b)
                                   for l in range(b))
        self._d = dct_matrix(b)
        super().__init__(crop, log, target, norm, norm_gamma, stats, block=b)

    def shape(self, h, w):
        return self.channels, h // self.block, w // self.block

    def extra_inputs(self, h, w, device=None, dtype=torch.float32):
        return None

    def _dct(self, like):
        return torch.as_tensor(self._d, dtype=like.dtype, device=like.device) \
            if P.is_torch(like) else self._d

    def transform(self, image):
        """(..., 3, H, W) -> (..., 3, b, b, H / b, W / b) block coefficients."""
        b, (h, w) = self.block, image.shape[-2:]
        if h % b or w % b:
            raise ConfigError(f"blockdct: a {w}x{h} window is not a multiple of the block {b}")
        x = image.reshape(*image.shape[:-2], h // b, b, w // b, b)  # (..., 3, i, u, j, v)
        ein = torch.einsum if P.is_torch(image) else np.einsum
        d = self._dct(image)
        return ein("ku,...iujv,lv->...klij", d, x, d)

    def inverse(self, coeffs, size):
        h, w = size
        ein = torch.einsum if P.is_torch(coeffs) else np.einsum
        d = self._dct(coeffs)
        x = ein("ku,...klij,lv->...iujv", d, coeffs, d)  # (..., 3, i, u, j, v)
        return x.reshape(*x.shape[:-4], h, w)

    def to_channels(self, coeffs):
        b = self.block
        flat = coeffs.reshape(*coeffs.shape[:-5], 3 * b * b, *coeffs.shape[-2:])
        return self._slog(flat)

    def from_channels(self, channels):
        b = self.block
        return self._slog_inv(channels).reshape(*channels.shape[:-3], 3, b, b,
                                                *channels.shape[-2:])
