"""Tests for helpers/synth_rain.py: the rain model, the Rain14000-named writer, the default set."""
import json
import math
import re
import socket

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from helpers import synth_rain
from helpers.images import read_rgb, write_rgb
from helpers.synth_rain import add_rain, build_default, write_paired_set
from tests.conftest import digest
from tools import synth_rain as synth_cli

CLEAN_RE = re.compile(r"^(\d+)\.png$")
RAIN_RE = re.compile(r"^(\d+)_(\d+)\.png$")


def _photo(h=128, w=160, seed=0):
    """A smooth, mid-grey, colourful test picture (no rain-like structure of its own)."""
    y, x = np.mgrid[0:h, 0:w] / max(h, w)
    img = np.stack([0.3 + 0.3 * x, 0.35 + 0.2 * y, 0.4 + 0.1 * np.sin(6 * x + 3 * y)], -1)
    img += np.random.default_rng(seed).normal(0, 0.01, img.shape)
    return np.clip(np.rint(img * 255), 0, 255).astype(np.uint8)


def _streak_map(angle, seed=0, size=160, **kw):
    clean = np.full((size, size, 3), 70, np.uint8)
    params = dict(density=0.004, length=30, width=1, brightness=0.8, haze=0, layers=1)
    params.update(kw)
    rainy = add_rain(clean, np.random.default_rng(seed), angle=angle, **params)
    return rainy.astype(np.float64).mean(-1) - clean.astype(np.float64).mean(-1)


def _orientation(d):
    """Dominant streak direction (degrees from vertical, + = top-left to bottom-right) and
    coherence in [0, 1], from the structure tensor: streaks vary least along themselves.
    Gaussian pre-smoothing, as usual for a structure tensor: finite differences on 1-px lines
    are biased towards the pixel axes."""
    gy, gx = np.gradient(ndimage.gaussian_filter(d, 1.5))
    j = np.array([[np.sum(gy * gy), np.sum(gy * gx)], [np.sum(gy * gx), np.sum(gx * gx)]])
    vals, vecs = np.linalg.eigh(j)  # ascending
    dy, dx = vecs[:, 0]  # the direction of least change
    ang = math.degrees(math.atan2(dx, dy))
    ang = (ang + 90) % 180 - 90  # a direction, not a vector: fold into [-90, 90)
    return ang, (vals[1] - vals[0]) / (vals[1] + vals[0])


def _shift_corr(d, dy, dx):
    """Correlation of d with itself shifted by (dy, dx) pixels (overlap only)."""
    h, w = d.shape
    a = d[max(dy, 0):h + min(dy, 0), max(dx, 0):w + min(dx, 0)]
    b = d[max(-dy, 0):h + min(-dy, 0), max(-dx, 0):w + min(-dx, 0)]
    return np.corrcoef(a.ravel(), b.ravel())[0, 1]


# ------------------------------------------------------------------------------- add_rain

def test_same_seed_same_output_different_seed_different():
    img = _photo()
    a = add_rain(img, np.random.default_rng(7))
    b = add_rain(img, np.random.default_rng(7))
    c = add_rain(img, np.random.default_rng(8))
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)
    assert np.mean(a != c) > 0.02  # not a one-pixel difference: a different rain pattern
    # an int seed is the same as a generator from that seed
    assert np.array_equal(add_rain(img, 7), a)


def test_output_uint8_same_shape_and_input_untouched():
    img = _photo(97, 131)  # odd sizes
    before = img.copy()
    out = add_rain(img, np.random.default_rng(0))
    assert out.dtype == np.uint8 and out.shape == img.shape
    assert np.array_equal(img, before)
    assert not np.array_equal(out, img)


def test_rain_brightens_and_never_darkens_without_haze():
    img = _photo()
    for seed in range(4):
        out = add_rain(img, np.random.default_rng(seed), haze=0).astype(int)
        diff = out - img.astype(int)
        assert diff.min() >= 0  # screen blend: streaks only add light
        assert diff.mean() > 1.0
        # sparse streaks: a minority of pixels changes a lot, most stay (nearly) unchanged
        changed = diff.max(-1) > 20
        assert 0.005 < changed.mean() < 0.6
        # rain is white: each changed pixel moves towards white by the same share of its
        # distance to white in R, G and B (the screen blend with a grey streak layer)
        share = diff[changed] / (255.0 - img[changed])
        assert np.all(np.abs(share - share.mean(-1, keepdims=True)) < 0.03)
    # with the default haze drawn too, the rainy image is brighter on average
    for seed in range(4):
        out = add_rain(img, np.random.default_rng(100 + seed))
        assert out.mean() > img.mean() + 1.0


@pytest.mark.parametrize("angle", [-25.0, 0.0, 12.0, 28.0])
def test_streaks_follow_the_requested_angle(angle):
    d = _streak_map(angle)
    est, coherence = _orientation(d)
    assert abs(est - angle) < 4.0, (est, angle)
    assert coherence > 0.5  # strongly oriented, not isotropic noise
    # the difference is correlated along the streak and hardly at all across it
    t = math.radians(angle)
    along = _shift_corr(d, round(6 * math.cos(t)), round(6 * math.sin(t)))
    across = _shift_corr(d, round(-6 * math.sin(t)), round(6 * math.cos(t)))
    assert along > 0.4 and across < 0.2, (along, across)


def test_parameters_change_what_they_say():
    # longer streaks stay correlated over a longer shift along the streak
    short = _shift_corr(_streak_map(0.0, length=10), 12, 0)
    long_ = _shift_corr(_streak_map(0.0, length=40), 12, 0)
    assert long_ > short + 0.3
    # more density covers more pixels
    sparse = (_streak_map(0.0, density=0.001) > 10).mean()
    dense = (_streak_map(0.0, density=0.008) > 10).mean()
    assert dense > 3 * sparse > 0
    # wider streaks: correlated over a sideways shift of 2 px
    thin = _shift_corr(_streak_map(0.0, width=1), 0, 2)
    wide = _shift_corr(_streak_map(0.0, width=4), 0, 2)
    assert wide > thin + 0.3
    # brightness scales the streak amplitude
    dim = _streak_map(0.0, brightness=0.3).max()
    bright = _streak_map(0.0, brightness=0.9).max()
    assert bright > 2 * dim
    # haze lowers contrast (the veil pulls every pixel towards one grey)
    img = _photo()
    clear = add_rain(img, np.random.default_rng(3), haze=0.0, density=0.0001)
    hazy = add_rain(img, np.random.default_rng(3), haze=0.3, density=0.0001)
    assert hazy.astype(float).std() < 0.8 * clear.astype(float).std()


def test_defaults_drawn_from_ranges_and_fixed_values_respected():
    img = _photo(256, 256)
    seen_layers, angles = set(), []
    for seed in range(12):
        _, p = add_rain(img, np.random.default_rng(seed), return_params=True)
        assert synth_rain.DENSITY_RANGE[0] <= p["density"] <= synth_rain.DENSITY_RANGE[1]
        assert synth_rain.LENGTH_RANGE[0] <= p["length"] <= synth_rain.LENGTH_RANGE[1]
        assert -30 <= p["angle"] <= 30
        assert 1 <= p["width"] <= synth_rain.WIDTH_RANGE[1]
        assert synth_rain.BRIGHTNESS_RANGE[0] <= p["brightness"] <= synth_rain.BRIGHTNESS_RANGE[1]
        assert synth_rain.HAZE_RANGE[0] <= p["haze"] <= synth_rain.HAZE_RANGE[1]
        seen_layers.add(p["layers"])
        angles.append(p["angle"])
        json.dumps({k: v for k, v in p.items()})  # plain floats: can go into a manifest
    assert seen_layers == {1, 2}
    assert np.ptp(angles) > 20  # really random, not a constant
    # lengths scale with the image: a 512-px image gets longer streaks for the same draw
    _, p256 = add_rain(_photo(256, 256), np.random.default_rng(5), return_params=True)
    _, p512 = add_rain(_photo(512, 512), np.random.default_rng(5), return_params=True)
    assert p512["length"] == pytest.approx(2 * p256["length"])
    assert p512["density"] == pytest.approx(p256["density"] / 4)
    # a fixed value is used as given, and fixing one leaves the other draws unchanged
    _, a = add_rain(img, np.random.default_rng(9), return_params=True)
    _, b = add_rain(img, np.random.default_rng(9), angle=10.0, length=33.0, return_params=True)
    assert b["angle"] == 10.0 and b["length"] == 33.0
    for k in ("density", "width", "brightness", "haze", "layers"):
        assert a[k] == b[k]


def test_bad_inputs_raise_clear_errors():
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="uint8"):
        add_rain(np.zeros((32, 32), np.uint8), rng)
    with pytest.raises(ValueError, match="uint8"):
        add_rain(np.zeros((32, 32, 3), np.float32), rng)
    with pytest.raises(TypeError, match="Generator"):
        add_rain(_photo(), "seed")


# ------------------------------------------------------------------------------- paired sets

def _pairs(folder):
    """Group a folder by Rain14000 naming: {id: sorted variant numbers}; asserts no strays."""
    clean, rain = set(), {}
    for p in folder.iterdir():
        if p.suffix != ".png":
            continue
        if m := CLEAN_RE.match(p.name):
            clean.add(int(m.group(1)))
        elif m := RAIN_RE.match(p.name):
            rain.setdefault(int(m.group(1)), []).append(int(m.group(2)))
        else:
            raise AssertionError(f"unexpected file {p.name}")
    assert set(rain) == clean  # every clean image has rainy versions and vice versa
    return {i: sorted(v) for i, v in rain.items()}


def test_write_paired_set_rain14000_naming(tmp_path):
    src = tmp_path / "src"
    write_rgb(src / "photo_a.png", _photo(90, 120, seed=1))
    arrays = [_photo(64, 64, seed=2), _photo(70, 50, seed=3)]
    out = tmp_path / "set"
    recs = write_paired_set([src / "photo_a.png"] + arrays, out, 3, np.random.default_rng(0),
                            start_id=5)
    assert [r["id"] for r in recs] == [5, 6, 7]
    assert _pairs(out) == {5: [1, 2, 3], 6: [1, 2, 3], 7: [1, 2, 3]}
    assert np.array_equal(read_rgb(out / "6.png"), arrays[0])  # clean stored losslessly
    assert np.array_equal(read_rgb(out / "5.png"), read_rgb(src / "photo_a.png"))
    for r in recs:
        clean = read_rgb(r["clean"])
        rains = [read_rgb(p) for p in r["rain"]]
        assert all(x.shape == clean.shape and x.dtype == np.uint8 for x in rains)
        assert all(x.mean() > clean.mean() for x in rains)
        assert not np.array_equal(rains[0], rains[1])  # variants differ
    # reproducible, and a smaller rerun removes the stale extra variants of the same ids
    out2 = tmp_path / "set2"
    write_paired_set([src / "photo_a.png"] + arrays, out2, 3, np.random.default_rng(0),
                     start_id=5)
    assert digest(out / "7_2.png") == digest(out2 / "7_2.png")
    write_paired_set(arrays, out, 1, np.random.default_rng(1), start_id=6)
    assert _pairs(out) == {5: [1, 2, 3], 6: [1], 7: [1]}
    # size resizes the shorter side, keeping the aspect
    write_paired_set(arrays[1:], tmp_path / "sized", 1, np.random.default_rng(0), size=35)
    assert read_rgb(tmp_path / "sized" / "1.png").shape == (49, 35, 3)
    assert read_rgb(tmp_path / "sized" / "1_1.png").shape == (49, 35, 3)


def test_cli_on_user_photos(tmp_path, capsys):
    src = tmp_path / "photos"
    write_rgb(src / "b.png", _photo(40, 48, seed=1))
    write_rgb(src / "a.jpg", _photo(36, 40, seed=2))
    out = tmp_path / "out"
    assert synth_cli.main([str(src), "--out", str(out), "--variants", "2", "--seed", "3"]) == 0
    assert _pairs(out) == {1: [1, 2], 2: [1, 2]}
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["sources"]["1"].endswith("a.jpg")  # sorted order, recorded for the user
    assert read_rgb(out / "1.png").shape == (36, 40, 3)
    # a file that cannot be decoded stops the run before anything is written, naming it
    (src / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not an image")
    out_bad = tmp_path / "bad"
    assert synth_cli.main([str(src), "--out", str(out_bad)]) == 2
    assert "broken.png" in capsys.readouterr().err
    assert not out_bad.exists()


# ------------------------------------------------------------------------------- default set

@pytest.fixture(scope="module")
def default_set(tmp_path_factory):
    """One default build, with the network made unusable: the build must need no download."""
    root = tmp_path_factory.mktemp("synthetic")

    def no_network(*a, **k):
        raise OSError("network disabled in this test")

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(socket.socket, "connect", no_network)
        mp.setattr(socket, "create_connection", no_network)
        info = build_default(root, seed=0)
    return root, info


def test_default_set_layout_counts_and_images(default_set):
    root, info = default_set
    assert info["built"] is True
    manifest = json.loads((root / "manifest.json").read_text())
    for name in ("train", "val"):
        folder = root / name
        assert info[name] == str(folder)
        pairs = _pairs(folder)
        variants = manifest["splits"][name]["variants"]
        assert len(pairs) == info[f"{name}_clean"] == manifest["splits"][name]["clean"]
        assert sum(map(len, pairs.values())) == info[f"{name}_pairs"]
        assert all(v == list(range(1, variants + 1)) for v in pairs.values())
        sizes = set(synth_rain.DEFAULT_SETTINGS[name]["sizes"])
        for idx, vs in pairs.items():
            with Image.open(folder / f"{idx}.png") as im:
                assert im.mode == "RGB"  # 8-bit RGB, what read_rgb and the model expect
                assert im.size[0] == im.size[1] and im.size[0] in sizes
                clean_size = im.size
            for k in vs:
                with Image.open(folder / f"{idx}_{k}.png") as im:
                    assert im.mode == "RGB" and im.size == clean_size
    assert 200 <= info["train_pairs"] <= 600
    assert 8 <= info["val_pairs"] <= 12 and info["val_pairs"] == info["val_clean"]
    # the rainy images really carry rain: brighter than their clean image
    val = root / "val"
    for idx in _pairs(val):
        assert read_rgb(val / f"{idx}_1.png").mean() > read_rgb(val / f"{idx}.png").mean()


def test_default_set_train_and_val_use_disjoint_photos(default_set):
    root, info = default_set
    manifest = json.loads((root / "manifest.json").read_text())
    origin = {name: set(manifest["splits"][name]["origin"].values()) for name in ("train", "val")}
    assert origin["train"] and origin["val"]
    assert origin["train"].isdisjoint(origin["val"])
    assert origin["train"] == set(info["train_sources"])
    assert origin["val"] == set(info["val_sources"])
    # every image id is attributed to a source
    assert len(manifest["splits"]["train"]["origin"]) == info["train_clean"]
    # at pixel level too: no val clean image equals any train clean image
    train_means = {round(read_rgb(p).mean(), 3) for p in (root / "train").glob("*.png")
                   if CLEAN_RE.match(p.name)}
    for p in (root / "val").glob("*.png"):
        if CLEAN_RE.match(p.name):
            assert round(read_rgb(p).mean(), 3) not in train_means


def test_default_set_is_idempotent_and_reproducible(default_set):
    root, info = default_set
    files = sorted(root.rglob("*.png")) + [root / "manifest.json"]
    stamps = {p: p.stat().st_mtime_ns for p in files}
    again = build_default(root, seed=0)
    assert again["built"] is False  # complete: read back, not rebuilt (the stamps below)
    assert {k: v for k, v in again.items() if k not in ("built", "seconds")} == \
        {k: v for k, v in info.items() if k not in ("built", "seconds")}
    assert {p: p.stat().st_mtime_ns for p in files} == stamps  # nothing rewritten
    assert sorted(root.rglob("*.png")) == sorted(p for p in files if p.suffix == ".png")
    # an incomplete set is rebuilt, to the same bytes (same seed -> same data)
    victim = root / "train" / "3_2.png"
    keep = {p: p.read_bytes() for p in (victim, root / "val" / "4_1.png", root / "train" / "1.png")}
    victim.unlink()
    rebuilt = build_default(root, seed=0)
    assert rebuilt["built"] is True
    for p, data in keep.items():
        assert p.read_bytes() == data
