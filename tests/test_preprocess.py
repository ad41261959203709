"""Tests of preprocess_csv: layout detection on tiny synthetic trees, CSV paths, the split, bad
input handling and atomic writing; plus pair counts on the real data when it is present."""
import csv
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import helpers.pairs as pc
from helpers.pairs import find_pairs, split_pairs, validate_pairs, write_pairs_csv
from preprocess_csv import main


# ---------------------------------------------------------------- helpers
def img(path, size=(8, 8), mode="RGB", seed=0):
    """Write a tiny image; the format follows the extension."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    w, h = size
    if mode == "RGB":
        arr = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    elif mode == "RGBA":
        arr = rng.integers(0, 256, (h, w, 4), dtype=np.uint8)
    elif mode == "L":
        arr = rng.integers(0, 256, (h, w), dtype=np.uint8)
    elif mode == "I;16":
        arr = rng.integers(0, 65536, (h, w), dtype=np.uint16)
    else:
        raise ValueError(mode)
    Image.fromarray(arr).save(path)
    return path


def truncated(path):
    """A PNG cut in the middle of its image data: the header reads, decoding fails."""
    img(path, size=(64, 64))
    data = Path(path).read_bytes()
    Path(path).write_bytes(data[: len(data) // 2])
    return path


def input_target(root, names=("1.png", "2.png", "10.png"), rain="input", clean="target"):
    for i, name in enumerate(names):
        img(root / rain / name, seed=i)
        img(root / clean / name, seed=100 + i)
    return root


def rows(path):
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def ids(pairs):
    return [(p.clean_id, p.rain_id) for p in pairs]


# ---------------------------------------------------------------- layout 1: Rain14000 naming
def test_rain14000_one_folder(tmp_path):
    root = tmp_path / "Rain1400"
    for clean, n in (("1", 3), ("2", 2), ("10", 1)):
        img(root / f"{clean}.jpg")
        for k in range(1, n + 1):
            img(root / f"{clean}_{k}.png")  # rainy variants may use another extension
    img(root / "orphan.png")
    problems = []
    pairs = find_pairs(root, problems)
    assert ids(pairs) == [("1", "1_1"), ("1", "1_2"), ("1", "1_3"),
                          ("2", "2_1"), ("2", "2_2"), ("10", "10_1")]
    assert {p.dataset for p in pairs} == {"Rain1400"}
    assert all(p.clean.parent == root and p.clean.suffix == ".jpg" for p in pairs)
    assert [(q.kind, Path(q.path).name) for q in problems] == [("unpaired", "orphan.png")]


def test_rain14000_many_variants_natural_order(tmp_path):
    root = tmp_path / "r"
    img(root / "995.jpg")
    for k in range(1, 15):
        img(root / f"995_{k}.jpg")
    pairs = find_pairs(root)
    assert [p.rain_id for p in pairs] == [f"995_{k}" for k in range(1, 15)]  # 2 before 10


@pytest.mark.parametrize("clean_dir,rain_dir", [("ground_truth", "rainy_image"),
                                                ("backgrounds", "streaked")])  # named, unnamed
def test_rain14000_sibling_folders(tmp_path, clean_dir, rain_dir):
    root = tmp_path / "Rain14000"
    for clean, n in (("995", 14), ("7", 2)):
        img(root / clean_dir / f"{clean}.jpg")
        for k in range(1, n + 1):
            img(root / rain_dir / f"{clean}_{k}.jpg")
    problems = []
    pairs = find_pairs(root, problems)
    assert problems == []
    assert len(pairs) == 16
    per_clean = {}
    for p in pairs:
        assert p.clean.parent.name == clean_dir and p.rain.parent.name == rain_dir
        assert p.rain_id.split("_")[0] == p.clean_id
        per_clean[p.clean_id] = per_clean.get(p.clean_id, 0) + 1
    assert per_clean == {"995": 14, "7": 2}
    assert pairs[0].clean_id == "7"  # natural order: 7 before 995
    assert {p.dataset for p in pairs} == {"Rain14000"}


# ---------------------------------------------------------------- layout 2: sibling folders
@pytest.mark.parametrize("rain,clean", [("input", "target"), ("Rainy", "NoRain"),
                                        ("rain", "norain")])
def test_named_sibling_folders(tmp_path, rain, clean):
    root = input_target(tmp_path / "set", rain=rain, clean=clean)
    pairs = find_pairs(root)
    assert [p.rain.name for p in pairs] == ["1.png", "2.png", "10.png"]
    for p in pairs:
        assert p.rain.parent.name == rain and p.clean.parent.name == clean
        assert p.rain.name == p.clean.name and p.clean_id == p.rain_id
        assert p.layout == "input/target"


def test_input_target_names_containing_rain_are_paired_by_folder(tmp_path):
    # JORDER-E keeps norain-N.png in both input/ and target/; Rain100L rain-NNN.png in both.
    jorder = input_target(tmp_path / "data" / "JORDERE", names=("norain-1.png", "norain-2.png"))
    r100l = input_target(tmp_path / "data" / "Rain100L", names=("rain-001.png", "rain-002.png"))
    pairs = find_pairs(tmp_path / "data")
    assert len(pairs) == 4
    assert {p.layout for p in pairs} == {"input/target"}
    for p in pairs:
        assert p.rain.parent.name == "input" and p.clean.parent.name == "target"
        assert p.rain.name == p.clean.name
    assert [p.dataset for p in pairs] == ["JORDERE"] * 2 + ["Rain100L"] * 2
    # Pointed at one half, the prefix detector must not invent pairs either.
    assert find_pairs(jorder / "input") == [] and find_pairs(r100l / "input") == []


def test_unpaired_file_in_input_target(tmp_path):
    root = input_target(tmp_path / "set")
    img(root / "input" / "extra.png")
    problems = []
    pairs = find_pairs(root, problems)
    assert len(pairs) == 3
    assert [(q.kind, Path(q.path).name) for q in problems] == [("unpaired", "extra.png")]


def test_only_input_folder_gives_no_pairs_and_a_note(tmp_path, capsys):
    root = tmp_path / "Real_rain"
    for i in (1, 2, 3):
        img(root / "input" / f"{i}.jpg")
    problems = []
    assert find_pairs(root, problems) == []
    assert [q.kind for q in problems] == ["no layout"]
    out = tmp_path / "pairs.csv"
    assert main([str(root), "--out", str(out), "--workers", "1"]) == 2
    err = capsys.readouterr().err
    assert "no (clean, rainy) pairs found" in err and "Real_rain" in err
    assert not out.exists()


# ---------------------------------------------------------------- layout 3: prefix naming
def test_prefix_naming(tmp_path):
    root = tmp_path / "Rain12"
    for key in ("001", "002", "010"):
        img(root / f"rain-{key}.png")
        img(root / f"norain-{key}.png")
    img(root / "rain_020.png")
    img(root / "norain_020.png")
    img(root / "rain-004.png")  # no clean partner
    img(root / "rainstreak-001.png")  # Rain100L-style auxiliary mask: ignored, not an error
    problems = []
    pairs = find_pairs(root, problems)
    assert ids(pairs) == [("norain-001", "rain-001"), ("norain-002", "rain-002"),
                          ("norain-010", "rain-010"), ("norain_020", "rain_020")]
    assert {p.layout for p in pairs} == {"prefix"}
    assert [(q.kind, Path(q.path).name) for q in problems] == [("unpaired", "rain-004.png")]


def test_several_datasets_nested(tmp_path):
    input_target(tmp_path / "all" / "A")
    img(tmp_path / "all" / "B" / "sub" / "rain-1.png")
    img(tmp_path / "all" / "B" / "sub" / "norain-1.png")
    pairs = find_pairs(tmp_path / "all")
    assert [p.dataset for p in pairs] == ["A", "A", "A", "B/sub"]
    # The ROOT itself is the dataset folder: its own name.
    assert {p.dataset for p in find_pairs(tmp_path / "all" / "A")} == {"A"}


# ---------------------------------------------------------------- CSV paths
@pytest.mark.parametrize("absolute", [False, True])
def test_csv_paths_resolve(tmp_path, absolute, monkeypatch):
    input_target(tmp_path / "data" / "set")
    out = tmp_path / "csvs" / "deep" / "pairs.csv"
    monkeypatch.chdir(tmp_path)  # relative ROOT and --out, as a user would type them
    args = ["data", "--out", "csvs/deep/pairs.csv", "--workers", "1"]
    assert main(args + (["--absolute"] if absolute else [])) == 0
    table = rows(out)
    assert list(table[0]) == ["image_filepath", "image_rain_filepath", "clean_id", "rain_id",
                              "dataset"]
    assert [r["rain_id"] for r in table] == ["1", "2", "10"]
    for r in table:
        for col in ("image_filepath", "image_rain_filepath"):
            assert os.path.isabs(r[col]) == absolute
            full = (out.parent / r[col]).resolve()
            assert full.is_file()
        assert Path(r["image_filepath"]).parent.name == "target"
        assert Path(r["image_rain_filepath"]).parent.name == "input"
        assert r["dataset"] == "set"


def test_write_pairs_csv_from_python(tmp_path):
    pairs = find_pairs(input_target(tmp_path / "set"))
    out = tmp_path / "x.csv"
    assert write_pairs_csv(pairs, out) == 3
    assert [r["image_rain_filepath"] for r in rows(out)] == [
        "set/input/1.png", "set/input/2.png", "set/input/10.png"]


# ---------------------------------------------------------------- split
def _split_tree(root, n_clean=20, variants=3):
    for c in range(1, n_clean + 1):
        img(root / "gt" / f"{c}.png")
        for k in range(1, variants + 1):
            img(root / "rainy" / f"{c}_{k}.png")
    return root


def test_split_reproducible_by_clean_image(tmp_path):
    root = _split_tree(tmp_path / "R")
    out = tmp_path / "out" / "pairs.csv"
    args = [str(root), "--out", str(out), "--val-fraction", "0.25", "--no-check"]
    assert main(args + ["--seed", "1"]) == 0
    train_p, val_p = tmp_path / "out" / "pairs_train.csv", tmp_path / "out" / "pairs_val.csv"
    assert sorted(os.listdir(tmp_path / "out")) == ["pairs_train.csv", "pairs_val.csv"]
    train, val = rows(train_p), rows(val_p)
    assert len(train) + len(val) == 60
    train_clean = {r["clean_id"] for r in train}
    val_clean = {r["clean_id"] for r in val}
    assert not train_clean & val_clean
    assert len(val_clean) == 5 and len(train_clean) == 15  # 0.25 of 20 clean images
    assert len(val) == 15  # every clean image keeps all 3 variants on its side
    first = (train_p.read_bytes(), val_p.read_bytes())
    assert main(args + ["--seed", "1"]) == 0
    assert (train_p.read_bytes(), val_p.read_bytes()) == first
    assert main(args + ["--seed", "2"]) == 0
    assert {r["clean_id"] for r in rows(val_p)} != val_clean


def test_split_pairs_ignores_input_order(tmp_path):
    pairs = find_pairs(_split_tree(tmp_path / "R", n_clean=10, variants=2))
    train, val = split_pairs(pairs, 0.3, seed=5)
    train2, val2 = split_pairs(list(reversed(pairs)), 0.3, seed=5)
    assert (train, val) == (train2, val2)
    assert len({p.clean_id for p in val}) == 3
    with pytest.raises(ValueError):
        split_pairs(pairs, 1.0)


# ---------------------------------------------------------------- bad input
def _bad_tree(root, kind):
    """Two good input/target pairs plus one broken one; returns the file that must be named."""
    input_target(root, names=("1.png", "2.png"))
    if kind == "truncated":
        img(root / "target" / "3.png")
        return truncated(root / "input" / "3.png")
    if kind == "size":
        img(root / "target" / "3.png", size=(8, 8))
        return img(root / "input" / "3.png", size=(8, 6))
    mode = {"grayscale": "L", "rgba": "RGBA", "16bit": "I;16"}[kind]
    img(root / "input" / "3.png")
    return img(root / "target" / "3.png", mode=mode)


BAD = {"truncated": "cannot be read", "size": "differs from its clean image"}


@pytest.mark.parametrize("kind", ["grayscale", "rgba", "16bit"])
def test_ordinary_modes_are_kept(tmp_path, capsys, kind):
    # grayscale, RGBA and 16-bit files are ordinary images: paired, and read as 8-bit RGB
    from helpers.images import read_rgb
    other = _bad_tree(tmp_path / "set", kind)
    out = tmp_path / "out" / "pairs.csv"
    assert main([str(tmp_path / "set"), "--out", str(out), "--workers", "1"]) == 0
    assert [r["rain_id"] for r in rows(out)] == ["1", "2", "3"]
    assert "skipped" not in capsys.readouterr().err.split("wrote")[0]
    assert read_rgb(other).shape[2] == 3


@pytest.mark.parametrize("kind", sorted(BAD))
def test_bad_file_reported_and_skipped(tmp_path, capsys, kind):
    bad = _bad_tree(tmp_path / "set", kind)
    out = tmp_path / "out" / "pairs.csv"
    workers = "2" if kind == "truncated" else "1"  # one case goes through the process pool
    assert main([str(tmp_path / "set"), "--out", str(out), "--workers", workers]) == 0
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if str(bad) in ln]
    assert len(lines) == 1 and BAD[kind] in lines[0] and "skipped" in lines[0]
    assert [r["rain_id"] for r in rows(out)] == ["1", "2"]
    assert "wrote 2 pairs" in err and "skipped 1:" in err


@pytest.mark.parametrize("kind", sorted(BAD) + ["unpaired"])
def test_strict_exits_nonzero_and_writes_nothing(tmp_path, capsys, kind):
    if kind == "unpaired":
        input_target(tmp_path / "set", names=("1.png",))
        bad = img(tmp_path / "set" / "target" / "2.png")
    else:
        bad = _bad_tree(tmp_path / "set", kind)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    code = main([str(tmp_path / "set"), "--out", str(out_dir / "pairs.csv"), "--strict",
                 "--workers", "1", "--val-fraction", "0.5"])
    assert code == 1
    err = capsys.readouterr().err
    assert str(bad) in err and "--strict" in err
    assert os.listdir(out_dir) == []


def test_validate_pairs_decodes_shared_clean_once(tmp_path):
    root = tmp_path / "r"
    truncated(root / "5.png")
    for k in (1, 2, 3):
        img(root / f"5_{k}.png")
    img(root / "6.png")
    img(root / "6_1.png")
    good, problems = validate_pairs(find_pairs(root), workers=1, progress=False)
    assert ids(good) == [("6", "6_1")]
    assert [(q.kind, Path(q.path).name) for q in problems] == [("unreadable", "5.png")]


def test_no_check_skips_decoding(tmp_path):
    _bad_tree(tmp_path / "set", "truncated")
    out = tmp_path / "pairs.csv"
    assert main([str(tmp_path / "set"), "--out", str(out), "--no-check"]) == 0
    assert len(rows(out)) == 3


def test_missing_root_and_bad_fraction(tmp_path, capsys):
    out = tmp_path / "pairs.csv"
    assert main([str(tmp_path / "nope"), "--out", str(out)]) == 2
    assert "no such folder" in capsys.readouterr().err
    input_target(tmp_path / "set")
    assert main([str(tmp_path / "set"), "--out", str(out), "--val-fraction", "1.5"]) == 2
    assert not out.exists()


# ---------------------------------------------------------------- atomic writing
def test_csv_never_half_written(tmp_path, monkeypatch):
    pairs = find_pairs(input_target(tmp_path / "set"))
    out_dir = tmp_path / "out"
    out = out_dir / "pairs.csv"
    assert write_pairs_csv(pairs, out) == 3
    good = out.read_bytes()
    assert os.listdir(out_dir) == ["pairs.csv"]  # no stray temporary file after success

    class HalfWriter:
        """A file that writes half of what it gets, then fails like a full disk."""

        def __init__(self, path, *a, **k):
            self.f = open(path, *a, **k)

        def write(self, text):
            self.f.write(text[: len(text) // 2])
            self.f.flush()
            raise OSError("No space left on device")

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

    monkeypatch.setattr(pc, "open", HalfWriter, raising=False)
    with pytest.raises(OSError, match="No space"):
        write_pairs_csv(pairs[:1], out)
    assert out.read_bytes() == good  # the previous CSV is intact
    assert os.listdir(out_dir) == ["pairs.csv"]


# ---------------------------------------------------------------- real data
REAL_COUNTS = {"Rain100L": 60, "Rain100H": 60, "JORDERE_small_train": 20,
               "JORDERE_small_test": 5, "PCNet_train40": 40, "SIRR19": 19}


@pytest.mark.parametrize("name", sorted(REAL_COUNTS))
def test_real_data_pairs(shared_data, name):
    problems = []
    pairs = find_pairs(shared_data / name, problems)
    assert problems == []
    assert len(pairs) == REAL_COUNTS[name]
    assert len({p.clean for p in pairs}) == len(pairs)
    for p in pairs:
        assert p.rain.parent.name == "input" and p.clean.parent.name == "target"
        assert p.rain.name == p.clean.name and p.dataset == name
        with Image.open(p.clean) as c, Image.open(p.rain) as r:  # header only: fast
            assert c.size == r.size


def test_real_data_whole_tree(shared_data):
    problems = []
    pairs = find_pairs(shared_data, problems)
    counts = {}
    for p in pairs:
        counts[p.dataset] = counts.get(p.dataset, 0) + 1
    assert counts == REAL_COUNTS  # Real_rain contributes nothing ...
    assert [q.kind for q in problems] == ["no layout"]  # ... and is only noted
    assert "Real_rain" in problems[0].path


def test_real_rain_has_no_pairs(shared_data, tmp_path):
    assert find_pairs(shared_data / "Real_rain") == []
    assert main([str(shared_data / "Real_rain"), "--out", str(tmp_path / "p.csv")]) == 2


def test_real_data_end_to_end_decoded(shared_data, tmp_path):
    out = tmp_path / "jordere.csv"
    assert main([str(shared_data / "JORDERE_small_test"), "--out", str(out),
                 "--workers", "1", "--strict"]) == 0
    table = rows(out)
    assert [r["rain_id"] for r in table] == [f"norain-{i}" for i in range(1, 6)]
    assert all((out.parent / r["image_rain_filepath"]).is_file() for r in table)


def test_split_keeps_a_background_number_on_one_side_across_datasets(tmp_path):
    # Rain100L-like and Rain100H-like sets share backgrounds by number under different names.
    for i in range(1, 13):
        img(tmp_path / "L" / "target" / f"rain-{i:03d}.png", seed=i)
        img(tmp_path / "L" / "input" / f"rain-{i:03d}.png", seed=100 + i)
        img(tmp_path / "H" / "target" / f"{i}.png", seed=i)
        img(tmp_path / "H" / "input" / f"{i}.png", seed=200 + i)
    pairs = find_pairs(tmp_path / "L") + find_pairs(tmp_path / "H")
    assert len(pairs) == 24
    train, val = split_pairs(pairs, 0.25, seed=3)
    number = lambda p: int(p.clean_id.split("-")[-1])  # noqa: E731
    train_n, val_n = {number(p) for p in train}, {number(p) for p in val}
    assert len(val_n) == 3 and not train_n & val_n
    assert len(val) == 6  # both datasets' pairs of each validation background
