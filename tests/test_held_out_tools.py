"""tools/shared_backgrounds.py (evaluation images whose clean background a training image has)
and tools/paired.py (image-by-image comparison of derain.py's scores, seeds pooled)."""
import csv
import json

import numpy as np
import pytest
from PIL import Image

from tools import paired, shared_backgrounds


def _photo(seed, size=(120, 80)):
    """A smooth random 'photo' (different seeds: clearly different images)."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (8, 12, 3), dtype=np.uint8)
    return Image.fromarray(small).resize(size, Image.Resampling.BICUBIC)


def test_shared_backgrounds_finds_reused_photos_and_only_them(tmp_path, capsys):
    train, target = tmp_path / "train", tmp_path / "target"
    train.mkdir(), target.mkdir()
    for k in range(3):
        _photo(k).save(train / f"t{k}.png")
    _photo(1).crop((0, 0, 119, 79)).save(target / "seen.jpg", quality=90)  # cropped, re-encoded
    _photo(7).save(target / "new.png")
    assert shared_backgrounds.main([str(target), "--train", str(train)]) == 0
    assert capsys.readouterr().out.split() == ["seen"]
    # a pairs CSV names the training images just as well
    pairs = tmp_path / "train.csv"
    with open(pairs, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["image_filepath", "image_rain_filepath"])
        w.writerow([train / "t1.png", train / "t1.png"])
    assert shared_backgrounds.main([str(target), "--train", str(pairs)]) == 0
    assert capsys.readouterr().out.split() == ["seen"]


def test_shared_backgrounds_names_bad_input(tmp_path, capsys):
    bad = tmp_path / "x.csv"
    bad.write_text("a,b\n1,2\n")
    (tmp_path / "t").mkdir()
    assert shared_backgrounds.main([str(tmp_path / "t"), "--train", str(bad)]) == 1
    assert "x.csv" in capsys.readouterr().err
    assert shared_backgrounds.main([str(tmp_path / "nope"), "--train", str(bad)]) == 1
    assert "nope" in capsys.readouterr().err


def _scores(folder, values):
    folder.mkdir(parents=True)
    with open(folder / "scores.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["name", "psnr_y", "ssim_y", "hf_err_db"])
        for name, v in values.items():
            w.writerow([name, v, 0.9, 1.0])
    return str(folder)


def test_paired_pools_seeds_per_image_and_leaves_out_what_it_is_told(tmp_path, capsys):
    a0 = _scores(tmp_path / "a0", {"x": 30.0, "y": 20.0, "z": 10.0})
    a1 = _scores(tmp_path / "a1", {"x": 32.0, "y": 22.0, "z": 10.0})
    b0 = _scores(tmp_path / "b0", {"x": 30.0, "y": 20.0, "z": 20.0})
    assert paired.main([f"{a0}+{a1}", b0, "--labels", "f,p"]) == 0
    out = capsys.readouterr().out
    # per image, A's seeds averaged: x +1, y +1, z -10 -> mean -2.67, A wins 2 of 3
    assert "-2.67" in out and "2/3" in out and "2/1" in out
    seen = tmp_path / "seen.txt"
    seen.write_text("z\n")
    assert paired.main([f"{a0}+{a1}", b0, "--labels", "f,p", "--exclude", str(seen)]) == 0
    out = capsys.readouterr().out
    assert "+1.00" in out and "2/2" in out and "f: 2 images, ? sampler step(s), PSNR-Y 26.00" in out
    assert "each seed alone" not in out  # B has one seed: no spread over seeds to show
    # two seeds a side: beside the pooled row, seed s of A against seed s of B
    b1 = _scores(tmp_path / "b1", {"x": 31.0, "y": 23.0, "z": 10.0})
    assert paired.main([f"{a0}+{a1}", f"{b0}+{b1}", "--labels", "f,p"]) == 0
    out = capsys.readouterr().out
    # seed 0: x 0, y 0, z -10 -> -3.33, won 0; seed 1: x +1, y -1, z 0 -> 0.00, won 1
    (line,) = [ln for ln in out.splitlines() if "seed 0 " in ln]
    assert "seed 0 -3.33 +- 3.33 (0/3), seed 1 +0.00 +- 0.58 (1/3)" in line
    # and their mean with its standard error over the seeds: sd(-3.33, 0) / sqrt(2)
    assert line.endswith("over 2 seeds -1.67 +- 1.67")


def test_paired_refuses_missing_scores(tmp_path, capsys):
    a = _scores(tmp_path / "a", {"x": 30.0})
    assert paired.main([a, str(tmp_path / "none")]) == 1
    assert "none" in capsys.readouterr().err
    b = _scores(tmp_path / "b", {"other": 30.0})
    assert paired.main([a, b]) == 1
    assert "no image" in capsys.readouterr().err
    wrong = tmp_path / "wrong.csv"
    wrong.write_text("x,y\n1,2\n")
    assert paired.main([a, str(wrong)]) == 1
    assert "wrong.csv" in capsys.readouterr().err


def _settings(folder, steps):
    (folder / "settings.json").write_text(json.dumps({"sample_steps": steps, "eta": 0.0}))


def _steps_column(out):
    """The steps column of the comparison table's rows."""
    return [line.split()[2] for line in out.splitlines() if line.split()[:1] == ["all"]]


def test_paired_labels_the_steps_derain_recorded(tmp_path, capsys):
    a = _scores(tmp_path / "a", {"x": 30.0, "y": 20.0})
    b = _scores(tmp_path / "b", {"x": 29.0, "y": 20.5})
    # no settings.json (outputs from before derain.py wrote it): the steps are unknown, not 1
    assert paired.main([a, b]) == 0
    out = capsys.readouterr().out
    assert _steps_column(out) == ["?"] and "A: 2 images, ? sampler step(s)" in out
    # derain.py's settings.json gives them; sides of different steps are still compared
    _settings(tmp_path / "a", 4)
    _settings(tmp_path / "b", 1)
    assert paired.main([a, b]) == 0
    out = capsys.readouterr().out
    assert _steps_column(out) == ["4/1"] and "+0.25" in out  # A's steps / B's
    assert "A: 2 images, 4 sampler step(s)" in out and "B: 2 images, 1 sampler step(s)" in out
    # one side's seeds at different steps would average unlike things: refused
    a2 = _scores(tmp_path / "a2", {"x": 30.0, "y": 20.0})
    _settings(tmp_path / "a2", 1)
    assert paired.main([f"{a}+{a2}", b]) == 1
    assert "different steps ([1, 4])" in capsys.readouterr().err
    # --steps labels folders without settings.json, and overrides it
    assert paired.main([a, b, "--steps", "2"]) == 0
    assert _steps_column(capsys.readouterr().out) == ["2"]
    with pytest.raises(SystemExit):
        paired.main([a, b, "--steps", "0"])
    (tmp_path / "b" / "settings.json").write_text("{not json")
    assert paired.main([a, b]) == 1
    assert "settings.json" in capsys.readouterr().err


def test_paired_pools_several_sets(tmp_path, capsys):
    # two sets that share an image name: pooled, each counts once, with its own set's scores
    _scores(tmp_path / "s1" / "a", {"x": 30.0, "y": 20.0})
    _scores(tmp_path / "s1" / "b", {"x": 29.0, "y": 19.0})
    _scores(tmp_path / "s2" / "a", {"x": 25.0, "z": 10.0})
    _scores(tmp_path / "s2" / "b", {"x": 27.0, "z": 10.0})
    (tmp_path / "seen_s2.txt").write_text("z\n")
    (tmp_path / "seen_s1.txt").write_text("")
    args = [str(tmp_path / "{set}" / "a"), str(tmp_path / "{set}" / "b"), "--sets", "s1,s2",
            "--exclude", str(tmp_path / "seen_{set}.txt"), "--steps", "1"]
    assert paired.main(args) == 0
    rows = {line.split()[1]: line.split() for line in capsys.readouterr().out.splitlines()
            if line.split()[:1] == ["all"]}
    assert set(rows) == {"s1", "s2", "pooled"}
    assert rows["s1"][5] == "+1.00" and rows["s2"][5] == "-2.00"  # z left out of s2
    assert rows["pooled"][3] == "3" and rows["pooled"][5] == "+0.00" and rows["pooled"][-1] == "2/3"
    with pytest.raises(SystemExit):  # --sets without '{set}' in the sides
        paired.main([str(tmp_path / "s1" / "a"), str(tmp_path / "s1" / "b"), "--sets", "s1"])
