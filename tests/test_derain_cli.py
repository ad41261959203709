"""derain.py's command line: inputs of every kind, outputs, scoring, bad files and checkpoints,
seeds, ensembles, the pixel domain, and a large image with a fake model (bounded memory)."""
import csv
import json
import os
import subprocess
import sys
import tracemalloc

import numpy as np
import pytest
import torch
from PIL import Image

import derain
import representations
from diffusion import Diffusion
from helpers.tiling import count_windows
from sampling import Derainer
from tests.conftest import REPO, digest
from tests.helpers_data import make_pairs, make_rep, smooth_image, tiny_model_args

FAST = ["--steps", "2", "--quiet"]


def _train(data, run_dir, *extra):
    args = ["--csv", str(data), "--val-csv", str(data), "--crop", "16",
            "--model-args", json.dumps(tiny_model_args("unet")),
            "--batch-size", "4", "--num-workers", "0", "--run-dir", str(run_dir),
            "--eval-every", "0", "--final-eval", "false", "--minutes", "0", "--log-every", "1",
            "--warmup-steps", "1", "--threads", "1", "--max-steps", "2",
            # a diffusion from noise, so that seeds, eta and samplers matter
            "--process", "diffusion", "--network", "unet", "--prediction", "v", *extra]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, str(REPO / "ddpm_conditional.py"), *args],
                       capture_output=True, text=True, cwd=REPO, env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    return sorted(run_dir.glob("ckpt_*.pt"))[-1]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("derain_cli")
    csv_path = make_pairs(root / "pairs", n=3, size=(24, 28))
    return {"csv": csv_path, "pairs": root / "pairs",
            "fft": _train(csv_path, root / "run_fft"),
            "pixel": _train(csv_path, root / "run_pixel", "--representation", "pixels")}


def _save(path, size, seed=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(smooth_image(np.random.default_rng(seed), *size)).save(path)
    return path


def _main(args, capsys):
    code = derain.main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def test_folder_of_mixed_sizes_and_shared_stems(setup, tmp_path, capsys):
    sizes = {"a2.png": (23, 37), "a10.jpg": (10, 12), "wide.bmp": (20, 41)}  # odd, tiny, wide
    for i, (name, size) in enumerate(sizes.items()):
        _save(tmp_path / "in" / name, size, seed=i)
    other = _save(tmp_path / "other" / "a2.png", (17, 18), seed=9)  # same stem as in/a2.png
    out = tmp_path / "out"
    code, stdout, _ = _main(["--ckpt", setup["fft"], tmp_path / "in", other, "--out", out, *FAST],
                            capsys)
    assert code == 0 and "derained 4, failed 0" in stdout
    expected = {"in_a2.png": (23, 37), "other_a2.png": (17, 18), "a10.png": (10, 12),
                "wide.png": (20, 41)}
    assert sorted(os.listdir(out)) == sorted(expected)  # PNG always, nothing overwritten
    for name, (h, w) in expected.items():
        with Image.open(out / name) as img:
            assert img.mode == "RGB" and img.size == (w, h)
            assert np.asarray(img).dtype == np.uint8


def test_start_up_line_says_whose_step_count_it_is(setup, tmp_path, capsys):
    """Without --steps the sampler takes the checkpoint's count, and the line says so (a study's
    checkpoint may carry another count than the one its table quotes)."""
    img = _save(tmp_path / "in" / "a.png", (12, 14))
    code, _, err = _main(["--ckpt", setup["fft"], img, "--out", tmp_path / "o1", "--quiet"],
                         capsys)
    assert code == 0 and "1 step, eta 0.0 (steps: the checkpoint's; --steps N to change)" in err
    code, _, err = _main(["--ckpt", setup["fft"], img, "--out", tmp_path / "o2", *FAST], capsys)
    assert code == 0 and "2 steps, eta 0.0, guidance" in err and "the checkpoint's" not in err


def test_pairs_csv_with_eval_scores_ours_and_the_baseline(setup, tmp_path, capsys):
    out = tmp_path / "out"
    code, stdout, _ = _main(["--ckpt", setup["fft"], setup["csv"], "--out", out, "--eval",
                             *FAST], capsys)
    assert code == 0, stdout
    assert "prediction" in stdout and "input (baseline)" in stdout and "gain" in stdout
    with open(out / "scores.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 3
    for col in ("name", "pred", "target", "psnr_y", "ssim_y", "input", "input_psnr_y",
                "input_ssim_y"):
        assert col in rows[0]
    assert all(float(r["psnr_y"]) > 0 and float(r["input_psnr_y"]) > 0 for r in rows)
    # beside the scores, what made them: the checkpoint and the sampling settings used
    settings = json.loads((out / "settings.json").read_text())
    assert settings["checkpoint"] == str(setup["fft"]) and settings["weights"] == "ema"
    assert settings["sample_steps"] == int(FAST[FAST.index("--steps") + 1])
    assert {"process", "sampler", "eta", "ensemble", "clip_x0", "seed"} <= set(settings)
    # --eval TARGET_DIR pairs a folder's outputs with the targets by file stem
    out2 = tmp_path / "out2"
    code, stdout, _ = _main(["--ckpt", setup["fft"], setup["pairs"] / "input", "--out", out2,
                             "--eval", setup["pairs"] / "target", *FAST], capsys)
    assert code == 0 and (out2 / "scores.csv").exists()
    with open(out2 / "scores.csv", newline="") as f:  # same images, same seeds: same scores
        assert [r["psnr_y"] for r in csv.DictReader(f)] == [r["psnr_y"] for r in rows]
    # a bare --eval needs a CSV's clean column
    with pytest.raises(SystemExit) as e:
        derain.main(["--ckpt", str(setup["fft"]), str(setup["pairs"] / "input"), "--out",
                     str(tmp_path / "o3"), "--eval"])
    assert e.value.code == 2


def test_bad_images_are_named_and_the_rest_still_derained(setup, tmp_path, capsys):
    d = tmp_path / "in"
    good = _save(d / "good.png", (20, 20))
    (d / "corrupt.png").write_bytes(good.read_bytes()[:60])
    Image.fromarray(np.full((20, 20), 128, np.uint8)).save(d / "gray.png")
    Image.fromarray(np.full((20, 20, 4), 128, np.uint8)).save(d / "rgba.png")
    Image.fromarray(np.full((20, 20), 40000, np.uint16)).save(d / "deep16.png")
    missing = tmp_path / "missing.png"
    code, stdout, stderr = _main(["--ckpt", setup["fft"], d, missing, "--out", tmp_path / "out",
                                  *FAST], capsys)
    assert code == 1
    for name in ("corrupt.png", "missing.png"):  # only what cannot be decoded is refused
        assert sum(name in line for line in stderr.splitlines() if line.startswith("error:")) \
            == 1, (name, stderr)
    assert "derained 4, failed 2" in stdout  # grayscale, RGBA and 16-bit are ordinary images
    assert sorted(os.listdir(tmp_path / "out")) == ["deep16.png", "good.png", "gray.png",
                                                   "rgba.png"]  # no partial files left behind


def test_damaged_or_foreign_checkpoint_exits_2_naming_it(setup, tmp_path, capsys):
    img = _save(tmp_path / "x.png", (20, 20))
    damaged = tmp_path / "damaged.pt"
    damaged.write_bytes(setup["fft"].read_bytes()[:4000])
    foreign = tmp_path / "foreign.pt"
    torch.save({"state_dict": {"w": torch.zeros(1)}}, foreign)
    for ckpt in (damaged, foreign):
        code, _, stderr = _main(["--ckpt", ckpt, img, "--out", tmp_path / "out", *FAST], capsys)
        assert code == 2 and ckpt.name in stderr and len(stderr.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()
    # the script itself: exit status and message
    r = subprocess.run([sys.executable, str(REPO / "derain.py"), "--ckpt", str(damaged),
                        str(img), "--out", str(tmp_path / "out")], capture_output=True,
                       text=True, cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": "1"},
                       timeout=120)
    assert r.returncode == 2 and "damaged.pt" in r.stderr


def _bytes(setup, tmp_path, capsys, tag, inputs, *extra):
    out = tmp_path / tag
    code, _, _ = _main(["--ckpt", setup["fft"], *inputs, "--out", out, *FAST, *extra], capsys)
    assert code == 0
    return {n: digest(out / n) for n in sorted(os.listdir(out))}


def test_seeds_make_outputs_reproducible(setup, tmp_path, capsys):
    a = _save(tmp_path / "in" / "a.png", (20, 26), seed=1)
    b = _save(tmp_path / "in" / "b.png", (18, 30), seed=2)
    for extra in (["--eta", "1"], ["--sampler", "ddpm"]):
        tag = extra[-1]
        one = _bytes(setup, tmp_path, capsys, f"{tag}1", [a, b], "--seed", "3", *extra)
        two = _bytes(setup, tmp_path, capsys, f"{tag}2", [a, b], "--seed", "3", *extra)
        other = _bytes(setup, tmp_path, capsys, f"{tag}3", [a, b], "--seed", "4", *extra)
        assert one == two
        assert one["a.png"] != other["a.png"] and one["b.png"] != other["b.png"]
    # image i's noise depends on (seed, i) only: not on the images derained after it
    alone = _bytes(setup, tmp_path, capsys, "alone", [a], "--eta", "1", "--seed", "3")
    assert alone["a.png"] == one["a.png"]


def test_ensemble_and_raw_weights(setup, tmp_path, capsys):
    img = _save(tmp_path / "x.png", (21, 19))
    ens = _bytes(setup, tmp_path, capsys, "ens", [img], "--ensemble", "2", "--eta", "1")
    one = _bytes(setup, tmp_path, capsys, "one", [img], "--eta", "1")
    assert ens["x.png"] != one["x.png"]
    with Image.open(tmp_path / "ens" / "x.png") as im:
        assert im.size == (19, 21)
    assert _bytes(setup, tmp_path, capsys, "raw", [img], "--no-ema")["x.png"]


def test_pixel_domain_checkpoint(setup, tmp_path, capsys):
    out = tmp_path / "out"
    code, stdout, _ = _main(["--ckpt", setup["pixel"], setup["csv"], "--out", out, "--eval",
                             "--batch-size", "3", *FAST], capsys)
    assert code == 0 and "derained 3, failed 0" in stdout and "input (baseline)" in stdout
    for n in ("1.png", "2.png", "3.png"):
        with Image.open(out / n) as img:
            assert img.mode == "RGB" and img.size == (28, 24)


class IdentityX0(torch.nn.Module):
    """Pixel domain, x0 prediction of a zero change: the output must be the input. Records the
    largest batch it is given."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.largest = 0

    def forward(self, x, t, cond):
        self.largest = max(self.largest, x.shape[0])
        return torch.zeros_like(x) + self.w


def test_large_image_with_a_fake_model_keeps_memory_bounded(tmp_path, capsys, monkeypatch):
    crop, batch, h, w, ensemble = 16, 64, 200, 300, 4
    model = IdentityX0()
    rep = make_rep("pixels", crop=crop)

    def fake(path, device="cpu", ema=True, **overrides):
        settings = dict(sampler="ddim", sample_steps=2, eta=0.0, guidance=1.0, clip_x0=0.0,
                        ensemble=1, sample_batch=32, flips=1)
        settings.update({k: v for k, v in overrides.items() if v is not None})
        return Derainer(model, rep, Diffusion(1000, "cosine", "x0"), settings, device), {}
    monkeypatch.setattr(derain, "load_derainer", fake)
    img = _save(tmp_path / "big.png", (h, w))
    windows = count_windows(h, w, crop, ensemble)
    assert windows > 10 * batch
    tracemalloc.start()
    try:
        code, stdout, stderr = _main(["--ckpt", "fake.pt", img, "--out", tmp_path / "out",
                                      "--steps", "1", "--batch-size", batch, "--ensemble",
                                      ensemble], capsys)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert code == 0, stderr
    assert np.array_equal(np.asarray(Image.open(tmp_path / "out" / "big.png")),
                          np.asarray(Image.open(img)))
    assert model.largest <= batch
    assert f"/{windows}" in stderr  # the per-window progress bar
    image_f64 = 3 * h * w * 8
    # the windows of the whole image would be 4 * ensemble = 16 such images; the float64
    # output, weights and their quotient a few
    assert peak < 8 * image_f64, peak / image_f64


def test_bench_sampling_reports_every_setting(setup, tmp_path):
    import bench_sampling
    out = tmp_path / "speed.json"
    assert bench_sampling.main(["--ckpt", str(setup["fft"]), "--csv", str(setup["csv"]),
                                "--settings", "ddpm:4,ddim:2", "--out", str(out),
                                "--threads", "1"]) == 0
    rows = json.loads(out.read_text())
    assert [(r["sampler"], r["steps"]) for r in rows] == [("ddpm", 4), ("ddim", 2)]
    assert all(r["images"] == 3 and r["seconds_per_image"] > 0 and np.isfinite(r["psnr_y"])
               for r in rows)
    assert bench_sampling.main(["--ckpt", str(setup["csv"]), "--csv", str(setup["csv"])]) == 2


def test_cond_clip_tool_counts_what_the_clip_bounds(setup, tmp_path, capsys):
    """tools.cond_clip: next to none of the training-like images' condition is clipped; an image
    whose spectrum is far outside the statistics' range (a full-contrast checkerboard) is."""
    from tools import cond_clip
    from representations.base import COND_CLIP
    odd = tmp_path / "odd"
    board = (np.indices((24, 28)).sum(0) % 2 * 255).astype(np.uint8)
    _save(odd / "x.png", (24, 28))
    Image.fromarray(np.stack([board] * 3, -1)).save(odd / "board.png")
    assert cond_clip.main(["--ckpt", str(setup["fft"]), str(setup["pairs"] / "input")]) == 0
    out = capsys.readouterr().out
    assert "3 images" in out
    share = float(out.split(" % of condition values")[0].split(", ")[-1])
    assert share < 1.0
    derainer, _ = derain.load_derainer(setup["fft"])
    mags = cond_clip.condition_magnitudes(derainer.rep, np.stack([board] * 3, -1))
    n, mean, worst, peak, errors = cond_clip.count_folder(derainer.rep, odd, 10)
    assert n == 2 and not errors and peak == pytest.approx(mags.max().item())
    assert worst == pytest.approx((mags > COND_CLIP).float().mean().item()) and worst > share / 100
    (odd / "bad.png").write_bytes(b"not an image")          # named on stderr, exit 1
    assert cond_clip.main(["--ckpt", str(setup["fft"]), str(odd)]) == 1
    assert "bad.png" in capsys.readouterr().err
    assert cond_clip.main(["--ckpt", str(setup["pixel"]), str(odd)]) == 0
    assert "does not apply" in capsys.readouterr().out


def test_other_rain_scores_two_models_on_unseen_sets_and_reuses_its_outputs(setup, tmp_path,
                                                                           capsys):
    """tools.other_rain: shared backgrounds listed and left out, every checkpoint derained at the
    steps given, the comparison per set and pooled; a second call derains nothing again."""
    import shutil

    from tools import other_rain
    root = tmp_path / "data"
    make_pairs(root / "S1", n=3, size=(20, 22), seed=5)
    for side in ("input", "target"):  # a pair on a background the models trained on
        shutil.copy(setup["pairs"] / side / "1.png", root / "S1" / side / "seen.png")
    make_pairs(root / "S2", n=2, size=(20, 22), seed=6)
    out = tmp_path / "out"
    args = ["--model", f"f={setup['fft']}+{setup['fft']}", "--model",
            f"p={setup['pixel']}+{setup['pixel']}", "--steps", "1", "--sets", "S1,S2",
            "--data-root", str(root), "--out", str(out), "--device", "cpu"]
    assert other_rain.main(args) == 0
    stdout = capsys.readouterr().out
    # the training pairs come from the checkpoints' configs: the copied pair is found
    assert (out / "seen_S1.txt").read_text() == "seen\n"
    assert (out / "seen_S2.txt").read_text() == ""
    rows = {ln.split()[1]: ln.split() for ln in stdout.splitlines()
            if ln.split()[:1] == ["all"] and "seed 0" not in ln}
    assert (rows["S1"][3], rows["S2"][3], rows["pooled"][3]) == ("3", "2", "5")
    assert "each seed alone" in stdout and "S1: f seed 0 (" in stdout  # derained this time
    scores = out / "S1" / "f" / "seed1" / "scores.csv"
    assert json.loads((scores.parent / "settings.json").read_text())["sample_steps"] == 1
    with open(scores, newline="") as f:  # every input is derained; the seen one is left out
        assert len(list(csv.DictReader(f))) == 4  # of the comparison only
    stamp = scores.stat().st_mtime_ns
    assert other_rain.main(args) == 0
    assert " seed 0 (" not in capsys.readouterr().out and scores.stat().st_mtime_ns == stamp
    # a run directory stands for its last checkpoint, the file the outputs were made with
    run_args = [a.replace(f"f={setup['fft']}+{setup['fft']}",
                          f"f={setup['fft'].parent}+{setup['fft']}") for a in args]
    assert other_rain.main(run_args) == 0
    assert " seed 0 (" not in capsys.readouterr().out and scores.stat().st_mtime_ns == stamp
    args[args.index("--steps") + 1] = "2"  # another step count: derained again
    assert other_rain.main(args) == 0
    assert json.loads((scores.parent / "settings.json").read_text())["sample_steps"] == 2
    capsys.readouterr()
    # a set that is not there, a malformed model
    bad = [*args[:args.index("--sets") + 1], "S1,nope", *args[args.index("--sets") + 2:]]
    assert other_rain.main(bad) == 1
    assert "nope" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        other_rain.main(["--model", "f", "--model", "p=x", "--steps", "1", "--out", str(out)])


def test_flips_reach_the_derainer_and_are_recorded(setup, tmp_path, capsys):
    """--flips N (the mean over N mirrored forms; sampling.FLIPS, whose arithmetic
    tests/test_derain.py checks) changes the output, is said on the start-up line and written to
    settings.json; a count other than 1, 2 or 4 is refused before anything is derained."""
    img = _save(tmp_path / "in" / "x.png", (23, 37))
    outs = {}
    for k in (1, 2):
        code, _, err = _main(["--ckpt", setup["fft"], img, "--out", tmp_path / f"f{k}", "--eval",
                              tmp_path / "in", "--flips", k, *FAST], capsys)
        assert code == 0, err
        assert f"flips {k}," in err
        assert json.loads((tmp_path / f"f{k}" / "settings.json").read_text())["flips"] == k
        outs[k] = np.asarray(Image.open(tmp_path / f"f{k}" / "x.png")).astype(int)
    assert outs[2].shape == outs[1].shape == (23, 37, 3)
    assert np.abs(outs[2] - outs[1]).max() > 0
    with pytest.raises(SystemExit) as e:
        derain.main(["--ckpt", str(setup["fft"]), str(img), "--out", str(tmp_path / "f8"),
                     "--flips", "8"])
    assert e.value.code == 2 and not (tmp_path / "f8").exists()
    assert "--flips" in capsys.readouterr().err
