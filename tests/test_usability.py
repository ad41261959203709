"""What a user meets first: every ordinary image derained in its own form, a small file to share,
the newest checkpoint by default, a self-explaining command line, a budgeted run that ends
decayed with validations logged, and outputs that the metrics can score."""
import json
import os
import subprocess
import sys

import numpy as np
import png
import pytest
import torch
from PIL import Image

import ddpm_conditional as D
from training.config import launch_comments
import derain
from checkpoint import ckpt_paths, load_checkpoint
from helpers.images import read_picture
from tests.conftest import REPO, digest
from tests.helpers_data import make_pairs, smooth_image
from tests.test_training import _args, _run


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("usability")
    csv = make_pairs(root / "pairs", n=3, size=(24, 28))
    r = _run(_args(csv, root / "run", "--max-steps", "3", "--ckpt-every", "0",
                   "--final-eval", "true"))
    assert r.returncode == 0, r.stderr[-2000:]
    return {"csv": csv, "run": root / "run", "ckpt": ckpt_paths(root / "run")[-1]}


def _photo(h=22, w=30, seed=0):
    return smooth_image(np.random.default_rng(seed), h, w)


def _derain(ckpt, inputs, out, *extra):
    code = derain.main(["--ckpt", str(ckpt), *map(str, inputs), "--out", str(out), "--quiet",
                        *extra])
    return code


def test_every_ordinary_image_is_derained_in_its_own_form(trained, tmp_path):
    d = tmp_path / "in"
    d.mkdir()
    rgb = _photo()
    Image.fromarray(rgb).convert("L").save(d / "gray.png")
    rgba = np.dstack([rgb, np.arange(22 * 30, dtype=np.uint8).reshape(22, 30)])
    Image.fromarray(rgba, "RGBA").save(d / "rgba.png")
    Image.fromarray(rgba[..., [0, 3]], "LA").save(d / "gray_alpha.png")
    deep = (rgb.astype(np.uint16) * 257 + np.arange(3, dtype=np.uint16))  # uses all 16 bits
    png.from_array(deep.reshape(22, -1), "RGB;16").save(str(d / "deep16.png"))
    gray16 = (rgb[..., 1].astype(np.uint16) * 257 + 7)
    png.from_array(gray16, "L;16").save(str(d / "gray16.png"))
    Image.fromarray(rgb).convert("P", palette=Image.ADAPTIVE, colors=64).save(d / "palette.png")
    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways: "rotate 90 degrees clockwise to view"
    Image.fromarray(rgb).save(d / "sideways.jpg", exif=exif, quality=95)
    out = tmp_path / "out"
    assert _derain(trained["ckpt"], [d], out) == 0
    modes = {}
    for name in os.listdir(out):
        pic = read_picture(out / name)
        modes[name] = (pic.gray, pic.depth, pic.alpha is not None, pic.size)
    assert modes["gray.png"] == (True, 8, False, (30, 22))
    assert modes["rgba.png"] == (False, 8, True, (30, 22))
    assert modes["gray_alpha.png"] == (True, 8, True, (30, 22))
    assert modes["deep16.png"] == (False, 16, False, (30, 22))
    assert modes["gray16.png"] == (True, 16, False, (30, 22))
    assert modes["palette.png"] == (False, 8, False, (30, 22))  # full colour: see derain.py
    assert modes["sideways.png"] == (False, 8, False, (22, 30))  # upright: rotated
    # the alpha channel passes through untouched
    np.testing.assert_array_equal(read_picture(out / "rgba.png").alpha, rgba[..., 3])
    np.testing.assert_array_equal(read_picture(out / "gray_alpha.png").alpha, rgba[..., 3])
    with Image.open(out / "gray.png") as im:
        assert im.mode == "L"
    # 16 bits are kept, not 8 bits padded: the low byte carries information
    with open(out / "deep16.png", "rb") as f:
        w, h, rows, info = png.Reader(file=f).asDirect()
        assert info["bitdepth"] == 16
        values = np.vstack([np.asarray(r, np.uint16) for r in rows])
    assert len(np.unique(values % 257)) > 10


def test_16_bit_input_is_derained_at_full_precision(trained, tmp_path):
    # two 16-bit images that are the same 8-bit image give different outputs
    rgb = _photo(seed=3).astype(np.uint16) * 257
    for k, offset in enumerate((0, 100)):
        png.from_array((rgb + offset).reshape(22, -1), "RGB;16").save(
            str(tmp_path / f"in{k}.png"))
    assert _derain(trained["ckpt"], [tmp_path / "in0.png", tmp_path / "in1.png"],
                   tmp_path / "out") == 0
    a, b = (read_picture(tmp_path / "out" / f"in{k}.png").rgb for k in (0, 1))
    assert np.abs(a - b).max() > 0


def test_export_is_small_and_derains_identically(trained, tmp_path, capsys):
    small = tmp_path / "model.pt"
    assert derain.main(["--export", str(trained["ckpt"]), "--out", str(small)]) == 0
    assert "MB" in capsys.readouterr().out
    exported = load_checkpoint(small)
    assert exported["inference_only"] and "optimizer" not in exported and "ema" not in exported
    assert small.stat().st_size < 0.5 * trained["ckpt"].stat().st_size
    img = tmp_path / "x.png"
    Image.fromarray(_photo(20, 26)).save(img)
    assert _derain(trained["ckpt"], [img], tmp_path / "a") == 0
    assert _derain(small, [img], tmp_path / "b") == 0
    assert digest(tmp_path / "a" / "x.png") == digest(tmp_path / "b" / "x.png")
    half = tmp_path / "half.pt"
    assert derain.main(["--export", str(trained["ckpt"]), "--out", str(half), "--fp16"]) == 0
    # every float weight is stored as float16 (half the bytes); the file is smaller by that
    weights = lambda ck: {k: v for k, v in load_checkpoint(ck)["model"].items()
                          if v.is_floating_point()}
    full, halved = weights(small), weights(half)
    assert {v.dtype for v in halved.values()} == {torch.float16} and halved.keys() == full.keys()
    saved = sum(v.nbytes for v in full.values()) - sum(v.nbytes for v in halved.values())
    assert saved == sum(v.nbytes for v in full.values()) // 2
    assert half.stat().st_size <= small.stat().st_size - 0.9 * saved
    assert _derain(half, [img], tmp_path / "c") == 0  # float16 weights load into the model


def test_without_a_checkpoint_the_newest_under_runs_is_used(trained, tmp_path, monkeypatch,
                                                            capsys):
    img = tmp_path / "x.png"
    Image.fromarray(_photo(20, 26)).save(img)
    monkeypatch.chdir(tmp_path)
    assert derain.main([str(img), "--quiet"]) == 2  # no runs/ here
    assert "python ddpm_conditional.py" in capsys.readouterr().err
    (tmp_path / "runs" / "a").mkdir(parents=True)
    os.symlink(trained["ckpt"], tmp_path / "runs" / "a" / "ckpt_00000003.pt")
    assert derain.main([str(img), "--quiet"]) == 0
    assert "using the newest checkpoint under runs/" in capsys.readouterr().err
    assert (tmp_path / "derained" / "x.png").exists()


def test_messages_stay_above_the_bar_and_the_failures_are_summed_up(trained, tmp_path, capsys):
    d = tmp_path / "in"
    d.mkdir()
    Image.fromarray(_photo()).save(d / "good.png")
    (d / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    code = derain.main(["--ckpt", str(trained["ckpt"]), str(d), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 1
    lines = err.splitlines()
    assert any(line.startswith("error:") and "broken.png" in line for line in lines)
    assert any(line.startswith("not derained:") and "broken.png" in line for line in lines)
    assert not any("broken.png" in line and "|" in line for line in lines)  # not inside a bar


def test_help_explains_every_flag_and_dry_run_shows_the_data_paths():
    r = subprocess.run([sys.executable, str(REPO / "ddpm_conditional.py"), "--help"],
                       capture_output=True, text=True, cwd=REPO, timeout=120)
    assert r.returncode == 0
    comments = launch_comments(D.launch)
    assert set(comments) == set(D.launch())  # every key has its comment in launch()
    flat = " ".join(r.stdout.split())
    for key in ("lr", "sample_steps", "representation", "minutes"):
        assert " ".join(comments[key].split()[:4]) in flat, key
    assert "{realimag,magphase" in flat and "[0.001]" in flat
    cfg = json.loads(subprocess.run([sys.executable, str(REPO / "ddpm_conditional.py"),
                                     "--preset", "rain100l", "--dry-run"], capture_output=True,
                                    text=True, cwd=REPO, timeout=120).stdout)
    assert cfg["csv"].endswith("rain100l/train.csv") and cfg["val_csv"].endswith("val.csv")
    assert cfg["stats"].endswith("train_stats_realimag_linear_64.json")  # the linear default


def test_a_budgeted_run_ends_decayed_with_validations_logged(tmp_path):
    csv = make_pairs(tmp_path / "pairs", n=3, size=(24, 28))
    args = _args(csv, tmp_path / "run", "--eval-points", "3", "--ckpt-every", "0",
                 "--warmup-steps", "200")
    args[args.index("--minutes") + 1] = "0.15"
    args[args.index("--lr-min-ratio") + 1] = "0.05"
    r = _run(args)
    assert r.returncode == 0, r.stderr[-2000:]
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    lrs = [rec["lr"] for rec in log if "lr" in rec]
    # warm-up ended within the budget although 200 steps were never reached, and the rate
    # decayed from then on (how far the last logged step gets depends on the machine's load: a
    # step can take a fifth of this 9-second budget on a busy machine)
    peak = lrs.index(max(lrs))
    assert max(lrs) > 0.9e-3 and lrs[-1] < 0.3e-3, lrs[-5:]
    assert all(a >= b for a, b in zip(lrs[peak:], lrs[peak + 1:]))
    vals = [rec for rec in log if "val_psnr_y" in rec]
    assert len(vals) == 3 and all(np.isfinite(v["val_psnr_y"]) for v in vals)
    assert "ETA" in r.stderr and "/0.15 min" in r.stderr  # the bar shows the budget


def test_the_main_jobs_outputs_are_scored_by_the_metrics(trained, tmp_path):
    log = [json.loads(line) for line in (trained["run"] / "log.jsonl").read_text().splitlines()]
    final = [rec for rec in log if "final_psnr_y" in rec]
    assert len(final) == 1  # the final evaluation is in the log (and TensorBoard)
    r = subprocess.run([sys.executable, "-m", "tools.score", str(trained["run"] / "derained"),
                        str(trained["csv"]), "--workers", "1"], capture_output=True, text=True,
                       cwd=REPO, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "input (baseline)" in r.stdout
    row = [line.split() for line in r.stdout.splitlines() if line.startswith("prediction")][0]
    assert float(row[1]) == pytest.approx(final[0]["final_psnr_y"], abs=1e-3)


def test_statistics_scripts_print_one_line(tmp_path):
    csv = make_pairs(tmp_path / "pairs", n=2, size=(20, 20))
    r = subprocess.run([sys.executable, str(REPO / "get_fft_statistics_log.py"), "--csv", str(csv),
                        "--out", str(tmp_path / "s.json"), "--crop", "16", "--workers", "1"],
                       capture_output=True, text=True, cwd=REPO, timeout=120)
    assert r.returncode == 0 and len(r.stdout.strip().splitlines()) == 1, r.stdout
    assert "wrote" in r.stdout and "2 pairs" in r.stdout


def test_the_pipeline_diagram_shows_what_the_code_does(tmp_path, monkeypatch):
    # the diagram's texts are read from the code and stored in the PNG, so the committed one
    # can be checked against the code without comparing pixels (which differ between
    # matplotlib and font versions)
    from tools import draw_pipeline as DP
    labels = json.loads(DP.labels_text(DP.pipeline_labels()))
    assert DP.labels_of(REPO / "training_pipeline.png") == labels, \
        "training_pipeline.png is out of date: run  python -m tools.draw_pipeline"
    out = DP.draw_pipeline(tmp_path / "a.png")
    assert DP.labels_of(out) == labels
    # and a changed default shows up in the texts
    monkeypatch.setattr(D, "launch", lambda: {**json.loads(json.dumps(labels["defaults"])),
                                              "sample_steps": 7})
    assert DP.pipeline_labels()["subtitle"] != labels["subtitle"]
