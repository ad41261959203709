"""Statistics scripts, FFTDataset and the training stream."""
import json
import subprocess
import sys

import numpy as np
import pytest
import torch

import representations
from representations.statistics import compute_statistics, load_statistics
from tests.conftest import REPO
from tests.helpers_data import make_pairs, make_rep
from utils import FFTDataset, StreamSampler, get_data

FOURIER = representations.names(statistics_only=True)

ORIGINAL_KEYS = [f"{k}_{c}_{s}" for s in ("max", "min", "mean", "std")
                 for k in ("mag", "phase") for c in "RGB"] + ["number_of_images",
                                                              "number_of_pixels"]


@pytest.fixture(scope="module")
def pairs_csv(tmp_path_factory):
    return make_pairs(tmp_path_factory.mktemp("pairs"), n=5, size=(20, 26))


def _stats(csv, tmp_path, representation="magphase", crop=16, log=True):
    out = tmp_path / f"stats_{representation}_{crop}_{log}.json"
    script = "get_fft_statistics_log.py" if log else "get_fft_statistics.py"
    r = subprocess.run([sys.executable, str(REPO / script), "--csv", str(csv), "--out", str(out),
                        "--representation", representation, "--crop", str(crop),
                        "--workers", "1"], capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 0, r.stdout + r.stderr
    return out


def test_statistics_scripts_write_every_original_key(pairs_csv, tmp_path):
    for log in (True, False):
        out = _stats(pairs_csv, tmp_path, log=log)
        stats = json.loads(out.read_text())
        for part in ("rain", "diff"):
            assert set(ORIGINAL_KEYS) <= set(stats[part]), part
            assert stats[part]["number_of_images"] == 5
        assert stats["settings"] == {"representation": "magphase", "crop": 16, "log": log,
                                     "fft_norm": "ortho", "phase_wrapped": True, "version": 1}
        # the wrapped phase difference stays in [-pi, pi]
        assert -np.pi - 1e-9 <= stats["diff"]["phase_R_min"] <= stats["diff"]["phase_R_max"] \
            <= np.pi + 1e-9
        freq = load_statistics(out)["per_frequency"]
        assert freq["rain_min"].shape == (6, 16, 16)
        assert np.all(freq["diff_min"] <= freq["diff_max"])
    raw = json.loads((tmp_path / "stats_magphase_16_False.json").read_text())
    logged = json.loads((tmp_path / "stats_magphase_16_True.json").read_text())
    assert raw["rain"]["mag_R_max"] == pytest.approx(np.log1p(1) * 0 + np.expm1(
        logged["rain"]["mag_R_max"]), rel=1e-5)


def test_statistics_match_a_direct_computation(pairs_csv, tmp_path):
    # per-channel max/mean over every 16x16 window and its mirror, computed independently
    stats, freq, errors = compute_statistics(pairs_csv, "realimag", 16, True, 1, {},
                                             progress=False)
    from helpers import process as P
    from helpers.pairs import load_pair, read_pairs
    from helpers.tiling import window_starts
    vals = []
    for c_path, r_path in read_pairs(pairs_csv):
        clean, rain = load_pair(c_path, r_path)
        for y in window_starts(20, 16):
            for x in window_starts(26, 16):
                for flip in (False, True):
                    w = rain[:, y:y + 16, x:x + 16]
                    spec = P.fft_image(w[..., ::-1] if flip else w)
                    vals.append(np.concatenate([P.signed_log_scale(spec.real),
                                                P.signed_log_scale(spec.imag)]))
    vals = np.stack(vals)
    assert not errors
    assert stats["rain"]["real_R_max"] == pytest.approx(vals[:, 0].max())
    assert stats["rain"]["imag_B_mean"] == pytest.approx(vals[:, 5].mean(), abs=1e-9)
    assert stats["rain"]["real_G_std"] == pytest.approx(vals[:, 1].std(), rel=1e-6)
    np.testing.assert_allclose(freq["rain_max"], vals.max(0))


def _rep(stats, name="realimag", target="diff", norm="perfreq_std", crop=16):
    return make_rep(name, target, norm, crop, True, load_statistics(stats))


def test_dataset_yields_finite_normalised_tensors(pairs_csv, tmp_path):
    for name in FOURIER:
        stats = _stats(pairs_csv, tmp_path, representation=name)
        for target in representations.TARGETS:
            for norm in representations.NORMS:
                rep = _rep(stats, name, target, norm)
                item = FFTDataset(pairs_csv, rep, train=False)[0]
                tgt, cond = item["target"], item["cond"]
                assert tgt.shape == cond.shape == rep.shape(16, 16)
                assert item["rain"].shape == item["clean"].shape == (3, 16, 16)
                assert tgt.dtype == cond.dtype == torch.float32
                assert torch.isfinite(tgt).all() and torch.isfinite(cond).all()
                # what decoding needs travels with the batch: the target decodes to the clean
                back = rep.decode(tgt.double(), item["rain"].double())
                assert (back - item["clean"]).abs().max() * 255 < 0.5
                if norm.endswith("_std"):  # mean -+ 2 std -> [-1, 1]: most values inside
                    assert tgt.abs().median() < 1
                    continue
                # the centre crop is not one of the windows the statistics saw, so a few values
                # may leave [-1, 1]; the bulk must be inside
                for x in (tgt, cond):
                    assert x.abs().quantile(0.9) <= 1 and x.abs().max() < 4


def test_std_norm_gives_each_frequency_the_same_spread(pairs_csv, tmp_path):
    ds = FFTDataset(pairs_csv, _rep(_stats(pairs_csv, tmp_path, representation="realimag")),
                    train=False)
    tgt = torch.stack([ds[i]["target"] for i in range(len(ds))])  # (N, 6, 16, 16)
    # over the statistics' own windows the per-frequency std would be 0.5 exactly; over centre
    # crops of 5 images it is near 0.5 on average, where min/max leaves it far smaller
    assert 0.25 < tgt.std(dim=0).mean() < 0.75


def test_representation_refuses_statistics_of_other_settings(pairs_csv, tmp_path):
    stats = _stats(pairs_csv, tmp_path, representation="magphase", crop=16)
    with pytest.raises(ValueError, match="representation.*get_fft_statistics_log.py"):
        _rep(stats, "realimag")
    with pytest.raises(ValueError, match="crop=16 .need 24."):
        _rep(stats, "magphase", crop=24)
    with pytest.raises(ValueError, match="log=True .need False.*get_fft_statistics.py"):
        make_rep("magphase", crop=16, log=False, stats=load_statistics(stats))
    with pytest.raises(ValueError, match="not a statistics file"):
        bad = tmp_path / "bad.json"
        bad.write_text('{"a": 1}')
        load_statistics(bad)


def test_pixel_representation_needs_no_statistics(pairs_csv):
    item = FFTDataset(pairs_csv, make_rep("pixels", crop=16))[1]
    assert item["target"].shape == (3, 16, 16)
    assert item["cond"].min() >= -1 and item["cond"].max() <= 1


def test_stream_sampler_is_resumable_and_sharded():
    full = [s for _, s in zip(range(30), StreamSampler(7, 2, seed=3))]
    resumed = [s for _, s in zip(range(20), StreamSampler(7, 2, seed=3, start_batch=5))]
    assert resumed == full[10:30]
    r0 = [i for (i, _), _ in zip(StreamSampler(8, 1, 1, rank=0, world=2), range(4))]
    r1 = [i for (i, _), _ in zip(StreamSampler(8, 1, 1, rank=1, world=2), range(4))]
    assert sorted(r0 + r1) == list(range(8))  # one epoch split over two ranks without overlap


def test_get_data_batches(pairs_csv, tmp_path):
    rep = _rep(_stats(pairs_csv, tmp_path, representation="magphase"), "magphase", norm="perfreq")
    cfg = dict(csv=str(pairs_csv), val_csv=str(pairs_csv), batch_size=4, num_workers=0)
    batch = next(iter(get_data(cfg, rep)))
    assert batch["target"].shape == (4, 6, 16, 16) and batch["rain"].shape == (4, 3, 16, 16)
    val = list(get_data(cfg, rep, train=False))
    assert sum(len(b["target"]) for b in val) == 5
    # validation takes the centre crop: deterministic
    assert torch.equal(val[0]["target"], list(get_data(cfg, rep, train=False))[0]["target"])
