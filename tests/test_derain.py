"""Window tiling of the sampling path (sampling.Derainer): exact, seamless, any size."""
import numpy as np
import pytest
import torch

import representations
from diffusion import Bridge, Diffusion
from helpers import process as P
from helpers.tiling import OVERLAP, window_starts, window_weight
from sampling import Derainer
from tests.helpers_data import make_rep


def _rep(crop, name="realimag"):
    # ranges wide enough for anything; what matters here is that they are applied exactly
    rep = make_rep(name, "diff", "perfreq", crop)
    if not rep.needs_statistics:
        return rep
    lo = np.full(rep.shape(crop, crop), -8.0)
    hi = np.full(rep.shape(crop, crop), 8.0)
    return make_rep(name, "diff", "perfreq", crop,
                                stats={"ranges": {"target": (lo, hi), "cond": (lo, hi)}})


def derain_array(model, rep, diffusion, rain, steps=2, batch_size=32, seed=0, eta=0.0,
                 coupled=False, sampler="ddim"):
    settings = dict(sampler=sampler, sample_steps=steps, eta=eta, guidance=1.0, clip_x0=3.0,
                    ensemble=1, sample_batch=batch_size, coupled=coupled, flips=1)
    return Derainer(model, rep, diffusion, settings).derain(rain, seed)


class ZeroDiff(torch.nn.Module):
    """A known-identity model: predicts x0 = the normalised spectrum of a zero change, so a
    correct pipeline must return the rainy image itself, bit for bit up to rounding."""

    def __init__(self, rep):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1, dtype=torch.float64))
        self.rep = rep

    def forward(self, x, t, cond):
        zero = P.normalize(torch.zeros_like(x), *self.rep._range(x, "target"))
        return zero + self.w


@pytest.mark.parametrize("h,w", [(50, 70), (33, 47), (10, 13), (16, 16), (17, 100)])
@pytest.mark.parametrize("representation", representations.names(statistics_only=True))
def test_identity_model_gives_back_the_input_without_seams(h, w, representation):
    crop = 16
    rep = _rep(crop, representation)
    rain = np.random.default_rng(h * w).random((3, h, w))
    d = Diffusion(1000, "cosine", "x0")
    for coupled in (False, True):
        out = derain_array(ZeroDiff(rep), rep, d, rain, steps=3, batch_size=5, seed=0,
                           coupled=coupled)
        assert out.shape == (3, h, w)
        assert np.max(np.abs(out - rain)) * 255 < 0.01  # exact: no seam, no border effect


def test_windows_cover_with_overlap():
    for length in (16, 17, 31, 64, 481):
        starts = window_starts(length, 16, OVERLAP)
        assert starts[0] == 0 and starts[-1] == max(0, length - 16)
        assert all(b - a <= 8 for a, b in zip(starts, starts[1:]))  # at least half overlap
    w = window_weight(16)
    assert w.min() > 0 and w[8, 8] == pytest.approx(w.max(), rel=0.05)


def test_blending_is_smooth_across_window_borders():
    # a model that adds a different constant in every window would show seams with hard
    # tiling; with the raised-cosine blend the change between neighbouring pixels stays small
    crop = 16
    rep = _rep(crop, "pixels")
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

    out = derain_array(PerWindowOffset(), rep, Diffusion(1000, "cosine", "x0"), rain, steps=1,
                       batch_size=64)
    jumps = np.abs(np.diff(out, axis=-1)).max()
    assert jumps < 0.05  # windows differ by up to 0.2; the blend spreads that over 8 pixels


@pytest.mark.parametrize("sampler,eta", [("ddim", 0.0), ("ddim", 0.5), ("ddpm", 0.0)])
def test_the_output_does_not_depend_on_the_batch_size(sampler, eta):
    # every window draws its initial noise and every step's noise from its own generator
    crop = 16
    rep = _rep(crop)

    class NoiseDependent(torch.nn.Module):  # output depends on x_t, so on the initial noise
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.tensor(0.3))

        def forward(self, x, t, cond):
            return self.w * x + 0.01 * cond

    rain = np.random.default_rng(0).random((3, 40, 30))
    d = Diffusion(1000, "cosine", "eps")
    outs = [derain_array(NoiseDependent(), rep, d, rain, steps=4, batch_size=b, seed=5,
                         eta=eta, sampler=sampler) for b in (1, 4, 64)]
    np.testing.assert_allclose(outs[0], outs[1], atol=1e-6)
    np.testing.assert_allclose(outs[0], outs[2], atol=1e-6)
    other = derain_array(NoiseDependent(), rep, d, rain, steps=4, batch_size=4, seed=6,
                         eta=eta, sampler=sampler)
    assert np.abs(other - outs[0]).max() > 1e-4  # and the seed does matter


class CountingNoiseDependent(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.tensor(0.3))
        self.batches = []

    def forward(self, x, t, cond):
        self.batches.append(x.shape[0])
        return self.w * x + 0.01 * cond


def test_coupled_windows_are_sampled_together_and_agree_at_every_step():
    rep, d = _rep(16), Diffusion(1000, "cosine", "eps")
    rain = np.random.default_rng(0).random((3, 40, 30))
    n_windows = len(window_starts(40, 16, OVERLAP)) * len(window_starts(30, 16, OVERLAP))
    # one step: blending the x0 estimates is what independent windows get at the end anyway
    one = [derain_array(CountingNoiseDependent(), rep, d, rain, steps=1, seed=5,
                        coupled=c) for c in (False, True)]
    np.testing.assert_allclose(one[0], one[1], atol=1e-6)
    # several steps: all windows go through every step together (in chunks of the batch size)
    net = CountingNoiseDependent()
    coupled = derain_array(net, rep, d, rain, steps=3, batch_size=4, seed=5, coupled=True)
    assert sum(net.batches) == 3 * n_windows and max(net.batches) <= 4
    independent = derain_array(CountingNoiseDependent(), rep, d, rain, steps=3, seed=5)
    assert np.abs(coupled - independent).max() > 1e-6  # the blending changed the path


def test_messages_name_the_sampler_of_the_process():
    from sampling import sampler_text
    s = dict(sampler="ddim", sample_steps=2, eta=0.0)
    assert sampler_text("bridge", s) == "bridge, 2 steps"
    assert sampler_text("diffusion", s) == "ddim, 2 steps, eta 0.0"
    assert sampler_text("regression", s) == "one pass"


class Mixer(torch.nn.Module):
    """A fixed nonlinear model of the state and the condition: any mistake in how samples are
    weighted or seeded shows in its output."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1, dtype=torch.float64))

    def forward(self, x, t, cond):
        return torch.tanh(0.7 * x + 0.3 * cond) + self.w


def _ensemble(rep, process, rain, eta, k):
    settings = dict(sampler="ddim", sample_steps=3, eta=eta, guidance=1.0, clip_x0=3.0,
                    ensemble=k, sample_batch=4, coupled=False, flips=1)
    return Derainer(Mixer(), rep, process, settings).derain(rain, 0)


def test_ensemble_is_the_mean_of_its_samples():
    """--ensemble K averages K samples of each window: with the deterministic bridge sampler
    (eta 0, from the rainy image) the K samples are one sample, so the mean must equal it,
    whatever K and however the jobs fall into batches; with eta 1 the samples differ, and their
    mean must differ from any one of them and lie nearer the deterministic path."""
    rep = _rep(16)
    rain = np.random.default_rng(5).random((3, 23, 30))
    bridge = Bridge(1000, 0.1, 0.9, "x0")
    one = _ensemble(rep, bridge, rain, 0.0, 1)
    for k in (2, 3):
        assert np.max(np.abs(_ensemble(rep, bridge, rain, 0.0, k) - one)) < 1e-5
    single = _ensemble(rep, bridge, rain, 1.0, 1)
    mean4 = _ensemble(rep, bridge, rain, 1.0, 4)
    assert np.max(np.abs(single - one)) > 1e-4  # the noise does reach the output
    assert np.max(np.abs(mean4 - single)) > 1e-4
    assert np.mean((mean4 - one) ** 2) < np.mean((single - one) ** 2)


def test_cut_windows_gives_the_same_stack_from_an_array_and_a_tensor():
    """The one window cutter (Derainer and tools.cond_clip): windows at window_boxes, the last
    flush with the far edges, the same values whether the image is NumPy or torch."""
    from helpers.tiling import cut_windows, window_boxes
    img = np.arange(3 * 5 * 7, dtype=np.float32).reshape(3, 5, 7)
    boxes = window_boxes(5, 7, 4, OVERLAP)
    a = cut_windows(img, boxes, 4)
    t = cut_windows(torch.from_numpy(img), boxes, 4)
    assert isinstance(a, np.ndarray) and a.shape == (len(boxes), 3, 4, 4)
    assert torch.equal(t, torch.from_numpy(a))
    y, x = boxes[-1]
    assert (y + 4, x + 4) == (5, 7) and np.array_equal(a[-1], img[:, 1:, 3:])


def _flipped(rep, rain, flips, model=None):
    settings = dict(sampler="ddim", sample_steps=2, eta=0.0, guidance=1.0, clip_x0=3.0,
                    ensemble=1, sample_batch=4, coupled=False, flips=flips)
    return Derainer(model or Mixer(), rep, Bridge(1000, 0.1, 0.9, "x0"), settings).derain(rain, 0)


def test_flips_average_the_image_derained_in_its_mirrored_forms():
    """--flips N: the mean of the image derained as it is and in N - 1 mirrored forms, each
    mirrored back. Checked against deraining those forms one by one (numpy's flips, the
    deterministic bridge sampler), on a size that is not square and not a multiple of the
    window, with a model that is not mirror-equivariant."""
    rep = _rep(16)
    rain = np.random.default_rng(7).random((3, 23, 37))
    forms = [lambda a: a, lambda a: a[:, :, ::-1], lambda a: a[:, ::-1, :],
             lambda a: a[:, ::-1, ::-1]]  # each its own inverse
    each = [f(_flipped(rep, np.ascontiguousarray(f(rain)), 1)) for f in forms]
    assert np.abs(each[1] - each[0]).max() > 1e-3  # the model does depend on the orientation
    for n in (1, 2, 4):
        out = _flipped(rep, rain, n)
        assert out.shape == rain.shape
        np.testing.assert_allclose(out, np.mean(each[:n], axis=0), atol=1e-5)
    # and an identity model still gives back the input exactly under all four forms
    np.testing.assert_allclose(_flipped(rep, rain, 4, ZeroDiff(rep)), rain, atol=1e-4 / 255)
    with pytest.raises(ValueError, match="flips"):
        _flipped(rep, rain, 8)
