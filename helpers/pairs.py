"""Pairs of (clean, rainy) images: finding them in folders, checking them, splitting them by
background, and the pairs CSV that training, statistics and deraining read (read_pairs,
load_pair). preprocess_csv.py is the command line over it.

CSV columns, one row per pair, sorted by dataset, then clean path, then rainy path, with numbers
compared as numbers (2 before 10):
    image_filepath, image_rain_filepath, clean_id, rain_id, dataset
The two paths are relative to the CSV's own folder (so a CSV and its data can move together),
or absolute with --absolute. The ids are file stems (e.g. "995" and "995_11"); `dataset` is the
folder that holds the layout, relative to ROOT (ROOT's own name when ROOT is that folder).

Recognised layouts (a ROOT may be one of them or contain several, at any depth):
  1. Rain14000/Rain1400 naming: clean "995.jpg", rainy "995_1.jpg" ... "995_14.jpg" (any
     extension, any number of variants), in one folder or in two sibling folders (for example
     ground_truth/ and rainy_image/; the clean folder is the one whose stems the rainy stems
     extend).
  2. Sibling folders input/+target/, rainy/+norain/ or rain/+norain/ (case-insensitive; also
     rainy_image/+ground_truth/, clean/, gt/) with identical file names (or stems); the first of
     each pair holds the rainy images. Rain14000 naming across such folders works too.
  3. Prefix naming in one folder: "rain-001.png" <-> "norain-001.png" (also "rain_001").
A folder claimed by a sibling layout is not searched again, so "norain-1.png" inside an
input/+target/ pair (JORDER-E) is paired by name across the folders, never by its prefix.

Validation: every image is fully decoded (a --workers process pool) and must be 8-bit RGB; a pair's
two images must have the same size. A bad file, a size-mismatched pair or an image with no partner
is reported on stderr as one line naming the file, skipped, and counted in the final summary;
with --strict any of them makes the run exit 1 without writing a CSV. --no-check skips decoding
(and so the size check). A folder with images but no recognised layout (e.g. rainy photos with no
ground truth) is only noted: it is not a broken pair. No pairs at all: exit 2.

Split (--val-fraction F --seed S): whole backgrounds are shuffled with the seed and
round(F * number of backgrounds) of them go to validation together with all of their rainy
variants. A background is a clean image's number, across datasets (Rain100L's rain-007.png and
Rain100H's 7.png are the same picture), or its file when its name has no number. Instead of
OUT this writes OUT_train.csv and OUT_val.csv beside it (from --out pairs.csv: pairs_train.csv
and pairs_val.csv). The same data and seed give the same split.

Every CSV is written atomically: an interrupted run leaves the previous file, never half of one.
"""
import concurrent.futures
import csv
import io
import os
import random
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from tqdm import tqdm

from helpers.errors import PairsError
from helpers.images import ImageError, atomic_path, check_image, is_image_file, natural_key, read_rgb


COLUMNS = ("image_filepath", "image_rain_filepath", "clean_id", "rain_id", "dataset")

# (rainy folder, clean folder), lower case, in order of preference when a folder has several.
NAMED_FOLDER_PAIRS = (
    ("input", "target"),
    ("rainy", "norain"),
    ("rain", "norain"),
    ("rainy_image", "ground_truth"),
    ("rainy", "clean"),
    ("rain", "clean"),
    ("input", "gt"),
    ("rainy", "gt"),
    ("rain", "gt"),
)

VARIANT_RE = re.compile(r"^(?P<base>.+)_(?P<k>\d+)$")  # 995_11 -> 995
PREFIX_RE = re.compile(r"^(?P<no>no)?rain(?P<sep>[-_])(?P<key>.+)$", re.IGNORECASE)
# Rain100L's training release ships streak/region masks beside rain-/norain- pairs; they are not
# images of a scene, so they are neither pairs nor "unpaired" errors.
AUX_MASK_RE = re.compile(r"^rain(region|streak|mask)[-_]", re.IGNORECASE)

# Problem kinds that drop data; anything else is a note that never fails --strict.
NOTE_KINDS = ("no layout",)


@dataclass(frozen=True)
class Pair:
    clean: Path
    rain: Path
    clean_id: str
    rain_id: str
    dataset: str
    layout: str


@dataclass(frozen=True)
class Problem:
    path: str
    kind: str  # unreadable, missing, unsupported mode, size mismatch, unpaired, ...
    message: str  # one line, starts with the file it is about

    @property
    def is_note(self):
        return self.kind in NOTE_KINDS


# ---------------------------------------------------------------- ordering
def pair_sort_key(p):
    return natural_key(p.dataset), natural_key(p.clean.as_posix()), natural_key(p.rain.as_posix())


def _images(folder):
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return []
    files = [Path(folder) / e.name for e in entries
             if not e.name.startswith(".") and is_image_file(e.name) and e.is_file()]
    return sorted(files, key=lambda f: natural_key(f.name))


def _subdirs(folder):
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return []
    dirs = [Path(folder) / e.name for e in entries if not e.name.startswith(".") and e.is_dir()]
    return sorted(dirs, key=lambda d: natural_key(d.name))


def _unpaired(path, where):
    return Problem(str(path), "unpaired", f"{path}: unpaired file (no partner image in {where})")


def _by_stem(files):
    """stem -> file, keeping the first of duplicate stems (e.g. 1.jpg and 1.png) so pairing stays
    deterministic; the duplicate ends up unpaired and reported."""
    out = {}
    for f in files:
        out.setdefault(f.stem, f)
    return out


# ---------------------------------------------------------------- layout 1: Rain14000 naming
def pairs_rain14000_folder(folder, dataset):
    """Clean "995.jpg" and rainy "995_1.jpg" ... in one folder. Returns (pairs, problems); a
    folder without any such pair returns ([], [])."""
    files = _images(folder)
    stems = _by_stem(files)
    pairs, used = [], set()
    for f in files:
        m = VARIANT_RE.match(f.stem)
        clean = stems.get(m["base"]) if m else None
        if clean is not None and clean != f:
            pairs.append(Pair(clean, f, clean.stem, f.stem, dataset, "rain14000"))
            used.update((clean, f))
    if not pairs:
        return [], []
    problems = [_unpaired(f, folder) for f in files
                if f not in used and not AUX_MASK_RE.match(f.stem)]
    return pairs, problems


def pairs_rain14000_siblings(clean_dir, rain_dir, dataset):
    """Clean "995.jpg" in `clean_dir`, rainy "995_1.jpg" ... in `rain_dir`."""
    return _match_folders(rain_dir, clean_dir, dataset, "rain14000", by_name=False)


def _variant_matches(clean_dir, rain_dir):
    """How many rainy stems in `rain_dir` extend a clean stem of `clean_dir` (995_3 -> 995)."""
    clean_stems = {f.stem for f in _images(clean_dir)}
    rain = _images(rain_dir)
    n = sum(1 for f in rain if (m := VARIANT_RE.match(f.stem)) and m["base"] in clean_stems)
    return n, len(rain)


# ---------------------------------------------------------------- layout 2: input/ + target/
def pairs_input_target(rain_dir, clean_dir, dataset):
    """Rainy images in `rain_dir` (input/, rainy/, rain/...), clean ones in `clean_dir` (target/,
    norain/...), paired by identical file name, then identical stem, then Rain14000 naming."""
    return _match_folders(rain_dir, clean_dir, dataset, "input/target", by_name=True)


def _match_folders(rain_dir, clean_dir, dataset, layout, by_name):
    rains, cleans = _images(rain_dir), _images(clean_dir)
    clean_names = {f.name: f for f in cleans}
    clean_stems = _by_stem(cleans)
    pairs, used, problems = [], set(), []
    for r in rains:
        c = (clean_names.get(r.name) or clean_stems.get(r.stem)) if by_name else None
        if c is None and (m := VARIANT_RE.match(r.stem)):
            c = clean_stems.get(m["base"])
        if c is None:
            problems.append(_unpaired(r, clean_dir))
            continue
        pairs.append(Pair(c, r, c.stem, r.stem, dataset, layout))
        used.add(c)
    problems += [_unpaired(c, rain_dir) for c in cleans if c not in used]
    return pairs, problems


# ---------------------------------------------------------------- layout 3: rain-001/norain-001
def pairs_prefix(folder, dataset):
    """"rain-001.png" <-> "norain-001.png" (or rain_001/norain_001) in one folder. A folder holding
    only one side (Rain100L's input/ has rain-001..., JORDER-E's has norain-N) gives ([], [])."""
    rain, clean, other = {}, {}, []
    for f in _images(folder):
        m = PREFIX_RE.match(f.stem)
        if m:
            (clean if m["no"] else rain).setdefault(m["key"], f)
        elif not AUX_MASK_RE.match(f.stem):
            other.append(f)
    keys = sorted(rain.keys() & clean.keys(), key=natural_key)
    if not keys:
        return [], []
    pairs = [Pair(clean[k], rain[k], clean[k].stem, rain[k].stem, dataset, "prefix") for k in keys]
    used = {p.rain for p in pairs} | {p.clean for p in pairs}
    problems = [_unpaired(f, folder) for f in list(rain.values()) + list(clean.values())
                if f not in used]
    # Files that are neither rain- nor norain- are left to the Rain14000 detector of the folder.
    return pairs, problems


# ---------------------------------------------------------------- detection
def _dataset_name(root, folder):
    rel = os.path.relpath(folder, root)
    return os.path.basename(os.path.abspath(root)) if rel == "." else Path(rel).as_posix()


def _sibling_layouts(folder):
    """[(rain_dir, clean_dir, kind)] among the direct subfolders of `folder`, each used once."""
    subdirs = _subdirs(folder)
    by_lower = {}
    for d in subdirs:
        by_lower.setdefault(d.name.lower(), d)
    found, claimed = [], set()
    for rain_name, clean_name in NAMED_FOLDER_PAIRS:
        r, c = by_lower.get(rain_name), by_lower.get(clean_name)
        if r and c and r not in claimed and c not in claimed:
            found.append((r, c, "named"))
            claimed.update((r, c))
    # Unnamed folders: Rain14000 naming decides which one is clean. Require most of the rainy
    # folder to match so that two unrelated folders sharing a few stems are not paired.
    free = [d for d in subdirs if d not in claimed and _images(d)]
    candidates = []
    for c in free:
        for r in free:
            if r != c:
                n, total = _variant_matches(c, r)
                if n and 2 * n > total:
                    candidates.append((-n, natural_key(r.name), natural_key(c.name), r, c))
    for *_, r, c in sorted(candidates, key=lambda t: t[:3]):
        if r not in claimed and c not in claimed:
            found.append((r, c, "rain14000"))
            claimed.update((r, c))
    return found


def find_pairs(root, problems=None):
    """All (clean, rainy) pairs under `root` in every recognised layout, sorted.

    Returns a list of Pair (clean, rain: Path as found under `root`; clean_id, rain_id: stems;
    dataset; layout). Images that are not part of any pair are appended to `problems` (a list)
    when one is given: Problem(kind="unpaired") inside a recognised layout, kind="no layout" (a
    note) for a folder of images in none. Raises FileNotFoundError when `root` is not a folder.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: no such folder")
    problems = [] if problems is None else problems
    pairs, seen = [], set()
    stack = [root]
    while stack:
        folder = stack.pop()
        real = os.path.realpath(folder)
        if real in seen:  # symlink loops, or two links to one dataset
            continue
        seen.add(real)
        dataset = _dataset_name(root, folder)
        claimed = set()
        for rain_dir, clean_dir, kind in _sibling_layouts(folder):
            if kind == "named":
                found, probs = pairs_input_target(rain_dir, clean_dir, dataset)
            else:
                found, probs = pairs_rain14000_siblings(clean_dir, rain_dir, dataset)
            pairs += found
            problems += probs
            claimed.update((rain_dir, clean_dir))
            seen.update((os.path.realpath(rain_dir), os.path.realpath(clean_dir)))
        own = _images(folder)
        if own:
            found = pairs_prefix(folder, dataset)[0] + pairs_rain14000_folder(folder, dataset)[0]
            pairs += found
            if found:
                # Judged over both detectors: a file one of them leaves over the other may pair.
                used = {p.rain for p in found} | {p.clean for p in found}
                problems += [_unpaired(f, folder) for f in own
                             if f not in used and not AUX_MASK_RE.match(f.stem)]
            else:
                problems.append(Problem(str(folder), "no layout",
                                        f"{folder}: {len(own)} images but no recognised pair "
                                        "layout (no ground truth?); no pairs taken from it"))
        stack += reversed([d for d in _subdirs(folder) if d not in claimed])
    return sorted(pairs, key=pair_sort_key)


# ---------------------------------------------------------------- validation
def _classify(message):
    for word, kind in (("not found", "missing"), ("cannot be read", "unreadable"),
                       ("unsupported image mode", "unsupported mode")):
        if word in message:
            return kind
    return "bad image"


def _check_one(path):
    """Worker: (path, (w, h) or None, error message or None). Never raises, so one bad file
    cannot take the pool down."""
    try:
        return path, check_image(path), None
    except ImageError as e:
        return path, None, str(e)
    except Exception as e:  # decoder bugs on hostile files still become one reported line
        return path, None, f"{path}: cannot be read as an image ({type(e).__name__}: {e})"


def default_workers():
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:
        cpus = os.cpu_count() or 1
    return max(1, min(4, cpus))


def validate_pairs(pairs, workers=None, progress=True):
    """Decode every image once and check pair sizes. Returns (good pairs, problems).

    A clean image shared by many rainy variants is decoded once; a bad file is reported once and
    drops every pair that uses it."""
    workers = default_workers() if workers is None else max(1, int(workers))
    paths = sorted({str(p.clean) for p in pairs} | {str(p.rain) for p in pairs}, key=natural_key)
    bar = tqdm(total=len(paths), desc="checking images", unit="img", file=sys.stderr,
               disable=None if progress else True)
    results = {}
    try:
        if workers == 1 or len(paths) < 2:
            for path in paths:
                results[path] = _check_one(path)[1:]
                bar.update()
        else:
            # Decoding is CPU-bound (PIL holds the GIL for much of it): processes, not threads.
            chunk = max(1, len(paths) // (workers * 16))
            with concurrent.futures.ProcessPoolExecutor(max_workers=workers) as pool:
                for path, size, err in pool.map(_check_one, paths, chunksize=chunk):
                    results[path] = (size, err)
                    bar.update()
    finally:
        bar.close()
    problems = [Problem(path, _classify(err), err)
                for path, (_, err) in results.items() if err is not None]
    good = []
    for p in pairs:
        (cs, ce), (rs, re_) = results[str(p.clean)], results[str(p.rain)]
        if ce or re_:
            continue
        if cs != rs:
            problems.append(Problem(str(p.rain), "size mismatch",
                                    f"{p.rain}: size {rs[0]}x{rs[1]} differs from its clean image "
                                    f"{p.clean} ({cs[0]}x{cs[1]})"))
            continue
        good.append(p)
    return good, problems


# ---------------------------------------------------------------- split and CSV
def background_number(clean_id):
    """The number of a clean image from its id ("rain-007" -> 7, "7" -> 7), None without one."""
    digits = re.findall(r"\d+", clean_id)
    return int(digits[-1]) if digits else None


def _background_key(pair):
    """The group a clean image belongs to when splitting: its number, shared across datasets.

    Rain100L and Rain100H use the same backgrounds under the same numbers ("rain-007.png" and
    "7.png" differ only by one padded row and column), so grouping by path alone could put one
    background on both sides of a split of a mixed CSV. Grouping every set's image N together is
    conservative for sets that do not share backgrounds and exact for those that do. Clean ids
    without a number are grouped by their file."""
    number = background_number(pair.clean_id)
    return ("n", number) if number is not None else ("f", os.path.abspath(pair.clean))


def split_pairs(pairs, val_fraction, seed=0):
    """(train, val): round(val_fraction * number of backgrounds) whole backgrounds, with all of
    their rainy variants in every dataset, go to val (see _background_key). Depends only on the
    pairs' datasets/ids/paths and the seed, not on the order of `pairs`."""
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be between 0 and 1 (exclusive), got {val_fraction}")
    order = sorted({_background_key(p) for p in pairs},
                   key=lambda k: (k[0], k[1]) if k[0] == "n" else (k[0], natural_key(k[1])))
    random.Random(seed).shuffle(order)
    n_val = round(val_fraction * len(order))
    if len(order) >= 2:  # an empty side would silently break training or evaluation
        n_val = min(max(n_val, 1), len(order) - 1)
    val_groups = set(order[:n_val])
    train = [p for p in pairs if _background_key(p) not in val_groups]
    val = [p for p in pairs if _background_key(p) in val_groups]
    return sorted(train, key=pair_sort_key), sorted(val, key=pair_sort_key)


def split_paths(out):
    """OUT -> (OUT_train.csv, OUT_val.csv) beside it, keeping OUT's extension."""
    out = Path(out)
    suffix = out.suffix or ".csv"
    return out.with_name(f"{out.stem}_train{suffix}"), out.with_name(f"{out.stem}_val{suffix}")


def _csv_text(pairs, out, absolute):
    base = os.path.dirname(os.path.abspath(out))

    def fmt(path):
        full = os.path.abspath(path)
        if absolute:
            return Path(full).as_posix()
        try:
            return Path(os.path.relpath(full, base)).as_posix()
        except ValueError:  # another drive on Windows: no relative path exists
            return Path(full).as_posix()

    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(COLUMNS)
    for p in sorted(pairs, key=pair_sort_key):
        writer.writerow((fmt(p.clean), fmt(p.rain), p.clean_id, p.rain_id, p.dataset))
    return buf.getvalue()


def _write_tmp(tmp, text):
    with open(tmp, "w", encoding="utf-8", newline="") as f:
        f.write(text)


def write_pairs_csv(pairs, out, absolute=False):
    """Write `pairs` to the CSV `out` atomically; paths relative to its folder unless `absolute`.
    Returns the number of rows written."""
    text = _csv_text(pairs, out, absolute)
    with atomic_path(out) as tmp:
        _write_tmp(tmp, text)
    return len(pairs)


def write_split_csvs(train, val, out, absolute=False):
    """Write OUT_train.csv and OUT_val.csv; neither is renamed into place unless both were
    written, so a failure never leaves a new train file next to a stale val file."""
    train_path, val_path = split_paths(out)
    texts = _csv_text(train, train_path, absolute), _csv_text(val, val_path, absolute)
    with atomic_path(train_path) as t1, atomic_path(val_path) as t2:
        for tmp, text in zip((t1, t2), texts):
            _write_tmp(tmp, text)
    return train_path, val_path


# ---------------------------------------------------------------- reading a pairs CSV
def read_pairs(csv_path):
    """Absolute (clean, rain) paths from a pairs CSV (paths in it are relative to the CSV)."""
    try:
        df = pd.read_csv(csv_path)
    except (OSError, ValueError) as e:  # missing, unreadable, empty or not CSV
        detail = (str(e).splitlines() or [type(e).__name__])[0]
        raise PairsError(f"{csv_path}: not a readable pairs CSV ({detail}); make one with "
                         "preprocess_csv.py") from e
    missing = {"image_filepath", "image_rain_filepath"} - set(df.columns)
    if missing:
        raise PairsError(f"{csv_path}: missing column(s) {sorted(missing)}; make the CSV with "
                         "preprocess_csv.py")
    base = os.path.dirname(os.path.abspath(csv_path))
    absolute = lambda p: p if os.path.isabs(p) else os.path.normpath(os.path.join(base, p))
    return [(absolute(c), absolute(r)) for c, r in zip(df.image_filepath, df.image_rain_filepath)]


def load_pair(clean_path, rain_path):
    """Read a pair as float64 (3, H, W) arrays; ImageError names the file on any problem."""
    clean, rain = read_rgb(clean_path), read_rgb(rain_path)
    if clean.shape != rain.shape:
        raise ImageError(f"{rain_path}: size {rain.shape[1]}x{rain.shape[0]} differs from its "
                         f"clean image {clean_path} ({clean.shape[1]}x{clean.shape[0]}); "
                         "fix or remove the pair")
    return clean.transpose(2, 0, 1) / 255.0, rain.transpose(2, 0, 1) / 255.0
