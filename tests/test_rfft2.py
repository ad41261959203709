"""The rfft2 representation: the half spectrum, its statistics, and a model trained and derained
with it (the generic contract and round trips are in test_representations.py, which covers
every registered representation)."""
import json
import subprocess
import sys

import numpy as np
import pytest
import torch

import representations
from helpers import process as P
from sampling import Derainer, sample_settings
from tests.conftest import REPO
from tests.helpers_data import make_pairs, make_rep
from tests.test_training import _args, _run


def test_the_half_spectrum_is_the_non_redundant_half_of_the_full_one():
    img = np.random.default_rng(0).random((3, 16, 12))
    rep = make_rep("rfft2", crop=16)
    assert rep.shape(16, 12) == (6, 16, 7) and rep.shape(16, 13) == (6, 16, 7)
    half = rep.transform(img)
    full = P.fft_image(img)  # columns fftshift-ed: column 12 // 2 = 6 is frequency 0
    np.testing.assert_allclose(half[..., :6], full[..., 6:], atol=1e-12)  # frequencies 0 .. 5
    np.testing.assert_allclose(half[..., 6], full[..., 0], atol=1e-12)  # 6 = -6, Nyquist
    ch = rep.to_channels(half)
    np.testing.assert_allclose(ch[:3, ..., :6], P.signed_log_scale(full.real[..., 6:]), atol=1e-12)
    for h, w in ((16, 12), (15, 13), (9, 20)):  # even, odd, non-square: exact inverses
        x = np.random.default_rng(h).random((3, h, w))
        np.testing.assert_allclose(rep.inverse(rep.transform(x), (h, w)), x, atol=1e-12)
        xt = torch.tensor(x)
        torch.testing.assert_close(rep.inverse(rep.transform(xt), (h, w)), xt)
    co = rep.extra_inputs(16, 7)
    assert co.shape == (3, 16, 7) and co[1, 0, 0] == 0 and co[1, 0, -1] == 1
    assert co[0, 8, 0] == 0 and co[2, 8, 0] == 0  # zero frequency: row h // 2, column 0


def test_statistics_of_the_half_spectrum(tmp_path):
    csv = make_pairs(tmp_path / "pairs", n=3, size=(20, 26))
    out = tmp_path / "stats.json"
    r = subprocess.run([sys.executable, str(REPO / "get_fft_statistics_log.py"), "--csv", str(csv),
                        "--out", str(out), "--representation", "rfft2", "--crop", "16",
                        "--workers", "1"], capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 0, r.stdout + r.stderr
    stats = json.loads(out.read_text())
    assert stats["settings"]["representation"] == "rfft2"
    assert {"real_R_max", "imag_B_std"} <= set(stats["diff"])
    with np.load(out.with_suffix(".npz")) as z:
        assert z["rain_mean"].shape == (6, 16, 9)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("rfft2")
    csv = make_pairs(root / "pairs", n=4, size=(24, 28))
    r = _run(_args(csv, root / "run", "--max-steps", "3", "--representation", "rfft2",
                   "--loss", "image", "--ckpt-every", "0", "--network", "unet", "--process",
                   "diffusion", "--prediction", "v"))
    assert r.returncode == 0, r.stderr[-2000:]
    return csv, sorted((root / "run").glob("ckpt_*.pt"))[-1]


def test_a_model_trains_and_derains_with_the_half_spectrum(trained, tmp_path):
    import derain
    from checkpoint import load_checkpoint, model_from_checkpoint
    csv, ckpt = trained
    model, rep, diffusion, cfg = model_from_checkpoint(load_checkpoint(ckpt))
    assert rep.name == "rfft2" and cfg["loss"] == "image"
    assert model.trunk.conv_in.in_channels == 6 + 6 + 3
    rain = np.random.default_rng(1).random((3, 30, 21))
    out = Derainer(model, rep, diffusion, sample_settings(cfg)).derain(rain)
    assert out.shape == (3, 30, 21) and np.isfinite(out).all()
    assert derain.main(["--ckpt", str(ckpt), str(csv), "--out", str(tmp_path / "o"), "--eval",
                        "--quiet"]) == 0
