"""Tests for helpers/metrics.py: the Y conversion, PSNR/SSIM against hand-computed values and a
direct implementation of the protocol, folder scoring, the CSV and the CLI; and the published
do-nothing scores of the shared Rain100L/H pairs (skipped when the shared data is absent)."""
import csv
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from helpers import metrics
from tools import score
from helpers.errors import InputError
from helpers.images import write_rgb
from helpers.metrics import (FolderScores, format_summary, psnr_rgb, psnr_y, rgb_to_y,
                             score_folders, score_pair, ssim_y, write_scores_csv)

REPO = Path(__file__).resolve().parents[1]


def _const(rgb, h=24, w=32):
    return np.broadcast_to(np.array(rgb, np.uint8), (h, w, 3)).copy()


def _textured(seed, h=40, w=52):
    """A smooth image plus noise: realistic enough that SSIM is neither 0 nor 1."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    base = 128 + 60 * np.sin(xx / 5.0)[..., None] * np.cos(yy / 7.0)[..., None] * [1, 0.8, 0.6]
    return np.clip(base + rng.normal(0, 12, (h, w, 3)), 0, 255).astype(np.uint8)


# ---------------------------------------------------------------- rgb_to_y
@pytest.mark.parametrize("rgb, y", [
    ((0, 0, 0), 16),            # black
    ((255, 255, 255), 235),     # white: 16 + 219
    ((255, 0, 0), 81),          # 16 + 65.481 = 81.481
    ((0, 255, 0), 145),         # 16 + 128.553 = 144.553
    ((0, 0, 255), 41),          # 16 + 24.966 = 40.966
    ((128, 128, 128), 126),     # 16 + 219 * 128 / 255 = 125.929
    ((1, 1, 1), 17),            # 16.859
    # exactly half: 16 + (130.962 + 5656.332 + 3520.206) / 255 = 16 + 36.5 = 52.5; MATLAB's
    # uint8 cast rounds half away from zero -> 53 (np.rint would give 52)
    ((2, 44, 141), 53),
])
def test_rgb_to_y_hand_computed(rgb, y):
    out = rgb_to_y(_const(rgb, 3, 4))
    assert out.shape == (3, 4) and out.dtype == np.float64
    assert np.all(out == y)


def test_rgb_to_y_is_integer_valued_and_in_range():
    img = np.random.default_rng(0).integers(0, 256, (50, 60, 3), dtype=np.uint8)
    y = rgb_to_y(img)
    assert np.all(y == np.round(y)) and y.min() >= 16 and y.max() <= 235
    exact = 16 + img.astype(np.float64) @ [65.481, 128.553, 24.966] / 255
    assert np.max(np.abs(y - exact)) <= 0.5 + 1e-9


def test_rgb_to_y_rejects_non_uint8_and_bad_shape():
    with pytest.raises(TypeError, match="uint8"):
        rgb_to_y(np.zeros((4, 4, 3), np.float32))
    with pytest.raises(ValueError, match=r"\(H, W, 3\)"):
        rgb_to_y(np.zeros((4, 4), np.uint8))


# ---------------------------------------------------------------- PSNR
def test_psnr_from_mse_with_either_peak():
    assert metrics.psnr_from_mse(1.0) == pytest.approx(10 * math.log10(255 ** 2), abs=1e-12)
    assert metrics.psnr_from_mse(0.01, peak=1.0) == pytest.approx(20.0, abs=1e-12)
    assert metrics.psnr_from_mse(0.0) == math.inf and metrics.psnr_from_mse(0, peak=1) == math.inf


def test_psnr_of_known_mse():
    target = _const((0, 0, 0))   # Y = 16
    pred = _const((1, 1, 1))     # Y = 17: an offset of one grey level everywhere, MSE 1
    expected = 10 * math.log10(255 ** 2)  # 48.1308 dB
    assert psnr_y(pred, target) == pytest.approx(expected, abs=1e-9)
    assert round(psnr_y(pred, target), 2) == 48.13
    assert psnr_rgb(pred, target) == pytest.approx(expected, abs=1e-9)  # RGB MSE is 1 too
    half = target.copy()
    half[:, :16] = 1             # half the pixels off by one: MSE 0.5
    assert psnr_y(half, target) == pytest.approx(10 * math.log10(255 ** 2 / 0.5), abs=1e-9)
    # Y ignores a change that does not move the rounded luma: psnr_y inf, psnr_rgb finite
    blue = _const((0, 0, 1))     # Y = 16 + 24.966/255 = 16.098 -> 16
    assert psnr_y(blue, target) == math.inf
    assert psnr_rgb(blue, target) == pytest.approx(10 * math.log10(255 ** 2 * 3), abs=1e-9)


def test_identical_images_psnr_inf_ssim_one():
    img = _textured(1)
    assert psnr_y(img, img) == math.inf
    assert psnr_rgb(img, img) == math.inf
    assert ssim_y(img, img) == pytest.approx(1.0, abs=1e-12)
    assert score_pair(img, img) == {"psnr_y": math.inf, "ssim_y": pytest.approx(1.0),
                                    "psnr_rgb": math.inf, "hf_err_db": 0.0, "hf_bias_db": 0.0}


def test_size_mismatch_raises():
    with pytest.raises(ValueError, match="52x40.*51x40"):
        score_pair(_textured(1), _textured(1)[:, :51])


# ---------------------------------------------------------------- SSIM
def _ssim_reference(y1, y2):
    """Wang et al. 2004 written out directly: an 11x11 Gaussian window (sigma 1.5, normalised),
    statistics only where the whole window fits ('valid'), population covariances."""
    ax = np.arange(11) - 5
    g = np.exp(-(ax[:, None] ** 2 + ax[None, :] ** 2) / (2 * 1.5 ** 2))
    w = g / g.sum()

    def filt(x):
        win = np.lib.stride_tricks.sliding_window_view(x, (11, 11))
        return np.einsum("ijkl,kl->ij", win, w)

    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    m1, m2 = filt(y1), filt(y2)
    v1, v2 = filt(y1 * y1) - m1 ** 2, filt(y2 * y2) - m2 ** 2
    cov = filt(y1 * y2) - m1 * m2
    s = (2 * m1 * m2 + c1) * (2 * cov + c2) / ((m1 ** 2 + m2 ** 2 + c1) * (v1 + v2 + c2))
    assert s.shape == (y1.shape[0] - 10, y1.shape[1] - 10)  # the valid region
    return s.mean()


def test_ssim_matches_valid_region_reference():
    a, b = _textured(2), _textured(3)
    b[:8] = 255  # a strong difference at the border: the padding must not enter the mean
    got = ssim_y(a, b)
    assert got == pytest.approx(_ssim_reference(rgb_to_y(a), rgb_to_y(b)), abs=1e-10)
    assert 0.05 < got < 0.95


def test_ssim_symmetric_and_decreasing_with_noise():
    a = _textured(4)
    rng = np.random.default_rng(5)
    noisy = [np.clip(a + rng.normal(0, s, a.shape), 0, 255).astype(np.uint8) for s in (3, 15, 40)]
    scores = [ssim_y(n, a) for n in noisy]
    assert scores == sorted(scores, reverse=True) and scores[0] < 1
    for n in noisy:
        assert ssim_y(n, a) == pytest.approx(ssim_y(a, n), abs=1e-12)


def test_ssim_too_small_image_is_a_clear_error():
    with pytest.raises(ValueError, match="11x11"):
        ssim_y(_const((9, 9, 9), 10, 30), _const((9, 9, 9), 10, 30))


# ---------------------------------------------------------------- folders, CSV, summary
@pytest.fixture()
def folders(tmp_path):
    """target/: a.jpg, b.png, c.png; pred/: a.png, b.png (c missing); rain/: a, b, c."""
    t, p, r = (tmp_path / n for n in ("target", "pred", "rain"))
    for d in (t, p, r):
        d.mkdir()
    imgs = {k: _textured(i + 10) for i, k in enumerate("abc")}
    rng = np.random.default_rng(0)
    Image.fromarray(imgs["a"]).save(t / "a.jpg", quality=95)
    write_rgb(t / "b.png", imgs["b"])
    write_rgb(t / "c.png", imgs["c"])
    for k, img in imgs.items():
        rain = img.astype(int) + rng.normal(0, 25, img.shape)
        write_rgb(r / f"{k}.png", np.clip(rain, 0, 255).astype(np.uint8))
        if k != "c":
            pred = img.astype(int) + rng.normal(0, 6, img.shape)
            write_rgb(p / f"{k}.png", np.clip(pred, 0, 255).astype(np.uint8))
    (t / "notes.txt").write_text("not an image")  # ignored
    return tmp_path


def test_score_folders_pairs_by_stem_and_reports_missing(folders):
    res = score_folders(folders / "pred", folders / "target", folders / "rain", workers=1)
    assert isinstance(res, FolderScores) and res.failed
    assert [r["name"] for r in res.rows] == ["a", "b"]
    assert res.rows[0]["pred"] == "a.png" and res.rows[0]["target"] == "a.jpg"
    assert len(res.errors) == 1 and "c.png" in res.errors[0] and "no prediction" in res.errors[0]
    expected = score_pair(folders / "pred" / "a.png", folders / "target" / "a.jpg")
    assert {k: res.rows[0][k] for k in expected} == expected
    base = score_pair(folders / "rain" / "b.png", folders / "target" / "b.png")
    assert res.rows[1]["input_psnr_y"] == base["psnr_y"]
    s = res.summary
    assert s["n"] == 2 and s["n_failed"] == 1
    assert s["psnr_y"] == pytest.approx(np.mean([r["psnr_y"] for r in res.rows]))
    assert s["baseline"]["ssim_y"] == pytest.approx(np.mean([r["input_ssim_y"] for r in res.rows]))
    assert s["psnr_y"] > s["baseline"]["psnr_y"] + 5  # the "prediction" is much cleaner
    # the process pool gives the same numbers as the serial path
    pooled = score_folders(folders / "pred", folders / "target", folders / "rain", workers=2)
    assert pooled.rows == res.rows and pooled.errors == res.errors


def test_score_folders_bad_files_are_reported_by_name(folders):
    p, t = folders / "pred", folders / "target"
    write_rgb(p / "c.png", _textured(0)[:, :40])               # wrong size
    (p / "b.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")   # corrupt
    write_rgb(p / "extra.png", _textured(0))                   # no target
    res = score_folders(p, t, workers=1)
    assert [r["name"] for r in res.rows] == ["a"]
    assert res.summary["baseline"] is None and res.summary["n_failed"] == 3
    joined = "\n".join(res.errors)
    assert "b.png" in joined and "cannot be read" in joined
    assert "c.png" in joined and "40x40" in joined and "52x40" in joined
    assert "extra.png" in joined and "no target" in joined
    with pytest.raises(NotADirectoryError, match="nowhere"):
        score_folders(folders / "nowhere", t)


def test_write_scores_csv_atomic_and_complete(tmp_path):
    rows = [{"name": "x", "pred": "x.png", "target": "x.png", "psnr_y": math.inf,
             "ssim_y": 1.0, "psnr_rgb": 30.123456789}]
    out = tmp_path / "sub" / "scores.csv"
    write_scores_csv(rows, out)
    assert os.listdir(out.parent) == ["scores.csv"]  # no temporary file left behind
    with open(out, newline="") as f:
        got = list(csv.DictReader(f))
    assert got == [{"name": "x", "pred": "x.png", "target": "x.png", "psnr_y": "inf",
                    "ssim_y": "1.0", "psnr_rgb": "30.123456789"}]


def test_format_summary_ours_vs_baseline():
    summary = {"n": 3, "n_failed": 0, "psnr_y": 30.0, "ssim_y": 0.9, "psnr_rgb": 29.0,
               "hf_err_db": 1.25, "hf_bias_db": -1.0,
               "baseline": {"psnr_y": 26.5, "ssim_y": 0.8, "psnr_rgb": 25.0, "hf_err_db": 4.5,
                            "hf_bias_db": 4.5}}
    text = format_summary(summary, rgb=True)
    lines = text.splitlines()
    assert "PSNR-Y" in lines[0] and "SSIM-Y" in lines[0] and "PSNR-RGB" in lines[0]
    assert lines[1].split() == ["prediction", "30.0000", "0.9000", "1.250", "29.0000", "3"]
    assert lines[2].split() == ["input", "(baseline)", "26.5000", "0.8000", "4.500", "25.0000",
                                "3"]
    assert lines[3].split() == ["gain", "+3.5000", "+0.1000", "-3.250", "+4.0000", "3"]
    no_base = format_summary({**summary, "baseline": None, "n_failed": 2})
    assert "baseline" not in no_base and "PSNR-RGB" not in no_base and "FAILED: 2" in no_base


# ---------------------------------------------------------------- CLI
def _cli(*args):
    return subprocess.run([sys.executable, "-m", "tools.score", *map(str, args)], cwd=REPO,
                          capture_output=True, text=True, timeout=120)


def test_cli_missing_prediction_fails_with_name(folders):
    out = folders / "scores.csv"
    r = _cli(folders / "pred", folders / "target", "--input", folders / "rain", "--csv", out,
             "--workers", "2")
    assert r.returncode == 1
    assert "c.png" in r.stderr and "no prediction" in r.stderr
    assert "input (baseline)" in r.stdout and "FAILED: 1" in r.stdout
    res = score_folders(folders / "pred", folders / "target", folders / "rain", workers=1)
    ours = next(line for line in r.stdout.splitlines() if line.startswith("prediction")).split()
    assert ours == ["prediction", f"{res.summary['psnr_y']:.4f}", f"{res.summary['ssim_y']:.4f}",
                    f"{res.summary['hf_err_db']:.3f}", "2"]
    with open(out, newline="") as f:
        rows = list(csv.DictReader(f))
    assert [row["name"] for row in rows] == ["a", "b"]
    assert float(rows[0]["input_psnr_y"]) == pytest.approx(res.rows[0]["input_psnr_y"])


def test_cli_success_exit_zero(folders, capsys):
    (folders / "target" / "c.png").unlink()
    assert score.main([str(folders / "pred"), str(folders / "target"), "--rgb",
                         "--workers", "1"]) == 0
    captured = capsys.readouterr()
    assert "PSNR-RGB" in captured.out and "baseline" not in captured.out
    assert captured.err == ""
    assert score.main([str(folders / "nowhere"), str(folders / "target")]) == 1
    assert "nowhere" in capsys.readouterr().err


# ---------------------------------------------------------------- published values
@pytest.mark.parametrize("name, psnr, ssim", [("Rain100L", 26.4375, 0.8302),
                                              ("Rain100H", 13.3838, 0.3643)])
def test_do_nothing_scores_of_shared_sets(shared_data, name, psnr, ssim):
    d = shared_data / name
    res = score_folders(d / "input", d / "target", input_dir=d / "input", workers=2)
    assert res.errors == [] and res.summary["n"] == 60
    s = res.summary
    assert abs(s["psnr_y"] - psnr) < 5e-5, s["psnr_y"]  # i.e. rounds to the 4 decimals given
    assert abs(s["ssim_y"] - ssim) < 5e-5, s["ssim_y"]
    assert s["baseline"] == {k: s[k] for k in ("psnr_y", "ssim_y", "psnr_rgb", "hf_err_db",
                                                "hf_bias_db")}


def test_the_spectral_error_sees_blur_and_added_streaks():
    # a blurred image lacks high-frequency energy (negative bias), added streaks bring more
    # (positive); the same image scores 0; the measure ignores a constant brightness change
    from scipy import ndimage

    from helpers.metrics import band_power_db, spectral_error
    from helpers.synth_rain import add_rain
    clean = _textured(3)
    blurred = ndimage.gaussian_filter(clean.astype(float), (1.5, 1.5, 0)).round().astype(np.uint8)
    rainy = add_rain(clean, np.random.default_rng(0))
    brighter = np.clip(clean.astype(int) + 10, 0, 255).astype(np.uint8)
    assert spectral_error(clean, clean) == {"hf_err_db": 0.0, "hf_bias_db": 0.0}
    blur = spectral_error(blurred, clean)
    rain = spectral_error(rainy, clean)
    assert blur["hf_bias_db"] < -3 and blur["hf_err_db"] == pytest.approx(-blur["hf_bias_db"])
    assert rain["hf_bias_db"] > 0.5
    assert spectral_error(brighter, clean)["hf_err_db"] < 0.5  # where not clipped, the same
    # the rings: white noise has a flat spectrum (within a dB), a smooth ramp none at the top
    noise = np.random.default_rng(1).normal(0, 20, (128, 96))
    db = band_power_db(noise)
    assert db.shape == (8,) and np.ptp(db[1:]) < 1.0
    assert band_power_db(np.outer(np.arange(128), np.ones(96)))[-1] < db[-1] - 20


# ---------------------------------------------------------------- error by frequency band
def test_error_by_band_splits_the_psnr_mse_exactly_and_by_frequency():
    from scipy import ndimage

    from helpers.metrics import error_by_band, psnr_from_mse
    clean = _textured(5)
    noisy = np.clip(clean.astype(int) + np.random.default_rng(2).normal(0, 9, clean.shape),
                    0, 255).astype(np.uint8)
    split = error_by_band(noisy, clean)
    assert split.shape == (8,) and (split >= 0).all()
    # Parseval: the bands add up to the MSE that PSNR-Y is computed from
    assert psnr_from_mse(split.sum()) == pytest.approx(psnr_y(noisy, clean), abs=1e-9)
    # a brightness change is all in the first ring (the mean), a blur's error in the upper ones
    brighter = (clean.astype(int) + 7).clip(0, 255).astype(np.uint8)
    shift = error_by_band(brighter, clean)   # (all but Y's rounding, which varies by pixel)
    assert shift[0] > 0.99 * shift.sum()
    blurred = ndimage.gaussian_filter(clean.astype(float), (1.5, 1.5, 0)).round().astype(np.uint8)
    blur = error_by_band(blurred, clean)
    assert blur[4:].sum() > 0.5 * blur.sum() and blur[0] < 0.1 * blur.sum()
    assert error_by_band(clean, clean).sum() == 0.0
    assert error_by_band(noisy, clean, bands=3).sum() == pytest.approx(split.sum())


def test_error_bands_tool_finds_the_band_a_gap_comes_from(tmp_path, capsys):
    # method A: the clean image plus low-frequency error; method B: A plus high-frequency
    # error, so B's whole gap sits in the top rings and the per-band dB add up to about it
    from tools import error_bands
    t, a, b = (tmp_path / n for n in ("target", "a", "b"))
    for d in (t, a, b):
        d.mkdir()
    yy, xx = np.mgrid[0:48, 0:64]
    for i in range(3):
        clean = _textured(20 + i, 48, 64)
        low = (6 * np.sin(xx / 12.0 + i))[..., None]
        high = (5 * np.where((xx + yy) % 2, 1, -1))[..., None]   # the Nyquist checkerboard
        write_rgb(t / f"{i}.png", clean)
        write_rgb(a / f"{i}.png", np.clip(clean + low, 0, 255).astype(np.uint8))
        write_rgb(b / f"{i}.png", np.clip(clean + low + high, 0, 255).astype(np.uint8))
    per = [error_bands.band_errors(d, t, 8)[0] for d in (a, b)]
    res = error_bands.compare(per, 8)
    assert res["names"] == ["0", "1", "2"] and res["gap_db"][0] == 0.0
    assert res["gap_db"][1] < -1.0                         # B is worse
    assert res["cost_db"][1, -1] > 0.9 * -res["gap_db"][1]  # ... by its top ring
    assert abs(res["cost_db"][1, :4]).max() < 0.05          # not by the low rings
    assert res["cost_db"][1].sum() == pytest.approx(-res["gap_db"][1], rel=0.2)
    assert error_bands.main([str(t), str(a), str(b), "--labels", "A,B"]) == 0
    out = capsys.readouterr().out
    assert "MSE A" in out and "dB vs A B" in out and "3 images" in out
    seen = tmp_path / "seen.txt"                           # --exclude leaves listed stems out
    seen.write_text("0\n\n1\n")
    assert error_bands.main([str(t), str(a), str(b), "--exclude", str(seen)]) == 0
    assert "1 images" in capsys.readouterr().out
    assert error_bands.main([str(t), str(a), str(b), "--exclude", str(tmp_path / "no")]) == 1
    assert "no" in capsys.readouterr().err
    (b / "2.png").unlink()                                 # a missing output: named, exit 1
    assert error_bands.main([str(t), str(a), str(b)]) == 1
    captured = capsys.readouterr()
    assert "2.png" in captured.err and "2 images" in captured.out
    for f in b.iterdir():                                  # no image common to all: exit 1
        f.unlink()
    assert error_bands.main([str(t), str(a), str(b)]) == 1
    assert "no image is scored for every method" in capsys.readouterr().err
    write_rgb(b / "0.png", _textured(1, 24, 24))            # a size mismatch names both files
    assert error_bands.main([str(t), str(a), str(b)]) == 1
    err = capsys.readouterr().err
    assert str(b / "0.png") in err and str(t / "0.png") in err and "same size" in err


def _streak_mask(h, w):
    """Diagonal streaks, one pixel in nine."""
    yy, xx = np.mgrid[0:h, 0:w]
    return (xx + 2 * yy) % 9 == 0


def test_rain_left_splits_the_error_along_the_rain_layer(tmp_path, capsys):
    from helpers.metrics import rain_left
    from tools import rain_left as tool
    clean = np.full((40, 52, 3), 100, np.uint8)
    streak = _streak_mask(40, 52)
    rain = clean + (60 * streak[..., None]).astype(np.uint8)
    assert rain_left(clean, clean, rain) == {"rain_left": 0.0, "rest_psnr_y": math.inf}
    assert rain_left(rain, clean, rain)["rain_left"] == pytest.approx(1.0)
    assert rain_left(rain, clean, rain)["rest_psnr_y"] == math.inf
    # 30 % of the rain left (18 of 60 on the streaks) plus an error orthogonal to the rain: +5
    # on the left half's pixels without streaks
    off = (~streak) & (np.arange(52) < 26)
    part = (clean + 18 * streak[..., None] + 5 * off[..., None]).astype(np.uint8)
    got = rain_left(part, clean, rain)
    assert got["rain_left"] == pytest.approx(0.3, abs=0.01)
    rest = np.where(off[..., None], part, clean)  # the output with the rain's part taken out
    assert got["rest_psnr_y"] == pytest.approx(psnr_y(rest, clean), abs=0.1)
    assert math.isnan(rain_left(clean, clean, clean)["rain_left"])  # no rain to measure
    with pytest.raises(InputError, match="rainy image is 52x39"):
        rain_left(clean, clean, rain[:-1])
    # the tool: folders paired by stem with --input; an output with no rainy image is named
    for name, img in (("pred", part), ("clean", clean), ("rain", rain)):
        (tmp_path / name).mkdir()
        write_rgb(tmp_path / name / "a.png", img)
    args = [str(tmp_path / "pred"), "--target", str(tmp_path / "clean")]
    assert tool.main([*args, "--input", str(tmp_path / "rain")]) == 0
    line = capsys.readouterr().out.splitlines()[-1].split()
    assert line[1] == "1" and float(line[3]) == pytest.approx(0.3, abs=0.01)
    assert tool.main(args) == 1
    assert "no rainy image" in capsys.readouterr().err
    # a missing folder among good ones: exit 1, the folder named, no partial table
    missing = str(tmp_path / "missing")
    assert tool.main([str(tmp_path / "pred"), missing, "--target", str(tmp_path / "clean"),
                      "--input", str(tmp_path / "rain")]) == 1
    got = capsys.readouterr()
    assert "missing" in got.err and got.out == ""
