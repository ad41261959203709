"""Window tiling of derain.py: exact, seamless, any size."""
import numpy as np
import pytest
import torch

from derain import derain_array, tile_starts, window_weight
from diffusion import Diffusion
from helpers import process as P
from utils import Codec


def _codec(crop, domain="fft", representation="realimag"):
    # ranges wide enough for anything; what matters here is that they are applied exactly
    lo = np.full((6, crop, crop), -8.0)
    hi = np.full((6, crop, crop), 8.0)
    stats = {"ranges": {"target": (lo, hi), "cond": (lo, hi)}}
    return Codec(domain, representation, "diff", "perfreq", crop, stats)


class ZeroDiff(torch.nn.Module):
    """A known-identity model: predicts x0 = the normalised spectrum of a zero change, so a
    correct pipeline must return the rainy image itself, bit for bit up to rounding."""

    def __init__(self, codec):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1, dtype=torch.float64))
        self.codec = codec

    def forward(self, x, t, cond):
        lo, hi = self.codec._as(x, "target")
        zero = P.normalize(torch.zeros_like(x), lo, hi)
        return zero + self.w


@pytest.mark.parametrize("h,w", [(50, 70), (33, 47), (10, 13), (16, 16), (17, 100)])
@pytest.mark.parametrize("representation", ["realimag", "magphase"])
def test_identity_model_gives_back_the_input_without_seams(h, w, representation):
    crop = 16
    codec = _codec(crop, representation=representation)
    rain = np.random.default_rng(h * w).random((3, h, w))
    d = Diffusion(1000, prediction="x0")
    out = derain_array(ZeroDiff(codec), codec, d, rain, steps=3, batch_size=5,
                       generator=torch.Generator().manual_seed(0))
    assert out.shape == (3, h, w)
    assert np.max(np.abs(out - rain)) * 255 < 0.01  # exact: no seam, no border effect


def test_windows_cover_with_overlap():
    for length in (16, 17, 31, 64, 481):
        starts = tile_starts(length, 16)
        assert starts[0] == 0 and starts[-1] == max(0, length - 16)
        assert all(b - a <= 8 for a, b in zip(starts, starts[1:]))  # at least half overlap
    w = window_weight(16)
    assert w.min() > 0 and w[8, 8] == pytest.approx(w.max(), rel=0.05)


def test_blending_is_smooth_across_window_borders():
    # a model that adds a different constant in every window would show seams with hard
    # tiling; with the raised-cosine blend the change between neighbouring pixels stays small
    crop = 16
    codec = _codec(crop, domain="pixel")
    rain = np.full((3, 40, 40), 0.5)

    class PerWindowOffset(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))
            self.calls = 0

        def forward(self, x, t, cond):
            self.calls += 1
            offs = torch.arange(x.shape[0], dtype=x.dtype).view(-1, 1, 1, 1) % 3 * 0.1
            return torch.zeros_like(x) + offs

    out = derain_array(PerWindowOffset(), codec, Diffusion(prediction="x0"), rain, steps=1,
                       batch_size=64)
    jumps = np.abs(np.diff(out, axis=-1)).max()
    assert jumps < 0.05  # windows differ by up to 0.2; the blend spreads that over 8 pixels


def test_ddim_output_does_not_depend_on_the_batch_size():
    crop = 16
    codec = _codec(crop)

    class NoiseDependent(torch.nn.Module):  # output depends on x_t, so on the initial noise
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.tensor(0.3, dtype=torch.float64))

        def forward(self, x, t, cond):
            return self.w * x + 0.01 * cond

    rain = np.random.default_rng(0).random((3, 40, 30))
    d = Diffusion(1000, prediction="eps")
    outs = [derain_array(NoiseDependent(), codec, d, rain, steps=4, batch_size=b,
                         generator=torch.Generator().manual_seed(5)) for b in (1, 4, 64)]
    np.testing.assert_allclose(outs[0], outs[1], atol=1e-9)
    np.testing.assert_allclose(outs[0], outs[2], atol=1e-9)
    other = derain_array(NoiseDependent(), codec, d, rain, steps=4, batch_size=4,
                         generator=torch.Generator().manual_seed(6))
    assert np.abs(other - outs[0]).max() > 1e-4  # and the seed does matter
