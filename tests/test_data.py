"""Statistics scripts, the codec and FFTDataset."""
import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from helpers import process as P
from helpers.statistics import channel_keys, compute_statistics, load_statistics, save_statistics
from tests.conftest import REPO
from tests.helpers_data import make_pairs
from utils import Codec, FFTDataset, StreamSampler, get_data

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
    stats, freq, errors = compute_statistics(pairs_csv, "realimag", 16, True, workers=1,
                                             progress=False)
    from helpers.statistics import load_pair, read_pairs, window_starts
    vals = []
    for c_path, r_path in read_pairs(pairs_csv):
        clean, rain = load_pair(c_path, r_path)
        for y in window_starts(20, 16):
            for x in window_starts(26, 16):
                for flip in (False, True):
                    w = rain[:, y:y + 16, x:x + 16]
                    vals.append(P.image_to_spectrum(w[..., ::-1] if flip else w, "realimag"))
    vals = np.stack(vals)
    assert not errors
    assert stats["rain"]["real_R_max"] == pytest.approx(vals[:, 0].max())
    assert stats["rain"]["imag_B_mean"] == pytest.approx(vals[:, 5].mean(), abs=1e-9)
    assert stats["rain"]["real_G_std"] == pytest.approx(vals[:, 1].std(), rel=1e-6)
    np.testing.assert_allclose(freq["rain_max"], vals.max(0))


def test_dataset_yields_finite_normalised_tensors(pairs_csv, tmp_path):
    for rep in P.REPRESENTATIONS:
        stats = _stats(pairs_csv, tmp_path, representation=rep)
        for target in P.TARGETS:
            for norm in ("perfreq", "global", "perfreq_std", "global_std"):
                ds = FFTDataset(pairs_csv, stats, 16, rep, target, norm, train=False)
                tgt, cond = ds[0]
                assert tgt.shape == cond.shape == (6, 16, 16)
                assert tgt.dtype == cond.dtype == torch.float32
                assert torch.isfinite(tgt).all() and torch.isfinite(cond).all()
                if norm.endswith("_std"):  # mean -+ 2 std -> [-1, 1]: most values inside
                    assert tgt.abs().median() < 1
                    continue
                # the centre crop is not one of the windows the statistics saw, so a few values
                # may leave [-1, 1]; the bulk must be inside
                for x in (tgt, cond):
                    assert x.abs().quantile(0.9) <= 1 and x.abs().max() < 4


def test_std_norm_gives_each_frequency_the_same_spread(pairs_csv, tmp_path):
    stats = _stats(pairs_csv, tmp_path, representation="realimag")
    ds = FFTDataset(pairs_csv, stats, 16, "realimag", "diff", "perfreq_std", train=False)
    tgt = torch.stack([ds[i][0] for i in range(len(ds))])  # (N, 6, 16, 16)
    # over the statistics' own windows the per-frequency std would be 0.5 exactly; over centre
    # crops of 5 images it is near 0.5 on average, where min/max leaves it far smaller
    assert 0.25 < tgt.std(dim=0).mean() < 0.75


def test_dataset_refuses_statistics_of_other_settings(pairs_csv, tmp_path):
    stats = _stats(pairs_csv, tmp_path, representation="magphase", crop=16)
    with pytest.raises(ValueError, match="representation.*get_fft_statistics_log.py"):
        FFTDataset(pairs_csv, stats, 16, "realimag")
    with pytest.raises(ValueError, match="crop=16 .need 24."):
        FFTDataset(pairs_csv, stats, 24, "magphase")
    with pytest.raises(ValueError, match="not a statistics file"):
        bad = tmp_path / "bad.json"
        bad.write_text('{"a": 1}')
        FFTDataset(pairs_csv, bad, 16)


def test_codec_round_trip_and_checkpoint_state(pairs_csv, tmp_path):
    stats = load_statistics(_stats(pairs_csv, tmp_path, representation="realimag"))
    rng = np.random.default_rng(0)
    clean = rng.integers(0, 256, (2, 3, 16, 16)) / 255.0
    rain = np.clip(clean + 0.3 * (rng.random(clean.shape) < 0.1), 0, 1)
    for domain in ("fft", "pixel"):
        codec = Codec(domain, "realimag", "diff", "perfreq", 16, stats)
        tgt, cond = codec.encode(clean, rain)
        back = Codec.from_state(codec.state()).decode(tgt.astype(np.float32), rain)
        assert np.max(np.abs(back - clean)) * 255 < 0.5


def test_pixel_domain_needs_no_statistics(pairs_csv):
    tgt, cond = FFTDataset(pairs_csv, None, 16, domain="pixel")[1]
    assert tgt.shape == (3, 16, 16) and cond.min() >= -1 and cond.max() <= 1


def test_stream_sampler_is_resumable_and_sharded():
    full = [s for _, s in zip(range(30), StreamSampler(7, 2, seed=3))]
    resumed = [s for _, s in zip(range(20), StreamSampler(7, 2, seed=3, start_batch=5))]
    assert resumed == full[10:30]
    r0 = [i for (i, _), _ in zip(StreamSampler(8, 1, 1, rank=0, world=2), range(4))]
    r1 = [i for (i, _), _ in zip(StreamSampler(8, 1, 1, rank=1, world=2), range(4))]
    assert sorted(r0 + r1) == list(range(8))  # one epoch split over two ranks without overlap


def test_get_data_batches(pairs_csv, tmp_path):
    stats = _stats(pairs_csv, tmp_path)
    cfg = dict(csv=str(pairs_csv), val_csv=str(pairs_csv), stats=str(stats), crop=16,
               representation="magphase", target="diff", norm="perfreq", domain="fft",
               batch_size=4, num_workers=0)
    tgt, cond = next(iter(get_data(cfg)))
    assert tgt.shape == (4, 6, 16, 16)
    val = list(get_data(cfg, train=False))
    assert sum(len(b[0]) for b in val) == 5
    # validation takes the centre crop: deterministic
    assert torch.equal(val[0][0], list(get_data(cfg, train=False))[0][0])
