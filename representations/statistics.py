"""Streaming FFT statistics over a pairs CSV: the numbers that map spectra to [-1, 1].

Both statistics scripts call `compute_statistics`; they differ only in `log` (after or before the
signed log). Statistics are measured on the same crops the model sees: each image is tiled into
windows of `crop` pixels (the last row and column of windows flush with the border), each also
mirrored left-right as the training loader does, so the per-frequency numbers describe exactly the
distribution the normalisation is applied to. With `crop=0` whole images are used (channel
statistics only: per-frequency statistics need one size).

Output (JSON, written atomically): for each of "rain", "diff" and "clean", the per-channel
max/min/mean/std under the representation's channel names ("real_R_max" ... for realimag), and
under "original" the same for magnitude and phase, the original system's table ("mag_R_max" ...
"phase_B_std", whatever the representation):
    {"settings": {...}, "rain": {"real_R_max": ..., ..., "number_of_images": N,
     "number_of_pixels": P}, "diff": {...}, "clean": {...},
     "original": {"rain": {"mag_R_max": ...}, "diff": {...}, "clean": {...}},
     "per_frequency": "stats.npz"}
and beside it, for crop > 0, an .npz with arrays "<part>_<stat>" of the shape the representation
encodes a window to (rep.shape(crop, crop), e.g. (6, crop, crop)) for part in rain/diff/clean and
stat in min/max/mean/std.
"""
import json
import os
from concurrent.futures import ProcessPoolExecutor

import numpy as np
from tqdm import tqdm

from helpers.errors import PairsError, StatisticsError
from helpers.images import ImageError, atomic_path, write_text
from helpers.pairs import load_pair, read_pairs
from helpers.tiling import pad_to, window_boxes
import representations

PARTS = ("rain", "diff", "clean")
# the scripts that compute them: linear values (the default) and after the signed log
SCRIPTS = "get_fft_statistics.py (or get_fft_statistics_log.py with --signed-log true)"


class _Accumulator:
    """min, max, sum, sum of squares per channel (and per frequency when shape is given)."""

    def __init__(self, per_frequency=True):
        self.n_images = 0
        self.n_pixels = 0  # per channel
        self.ch = {k: None for k in ("min", "max", "sum", "sq")}
        self.freq = {k: None for k in ("min", "max", "sum", "sq")} if per_frequency else None
        self.n_freq = 0

    def add(self, x):  # x: (N, C, H, W) float64, C and H, W as the representation encodes
        flat = x.transpose(1, 0, 2, 3).reshape(x.shape[1], -1)
        upd = {"min": flat.min(1), "max": flat.max(1), "sum": flat.sum(1), "sq": (flat ** 2).sum(1)}
        _merge(self.ch, upd)
        self.n_pixels += flat.shape[1]
        if self.freq is not None:
            _merge(self.freq, {"min": x.min(0), "max": x.max(0), "sum": x.sum(0),
                               "sq": (x ** 2).sum(0)})
            self.n_freq += x.shape[0]

    def merge(self, other):
        self.n_images += other.n_images
        self.n_pixels += other.n_pixels
        self.n_freq += other.n_freq
        _merge(self.ch, other.ch)
        if self.freq is not None:
            _merge(self.freq, other.freq)


def _merge(acc, upd):
    if upd["min"] is None:
        return
    if acc["min"] is None:
        acc.update({k: np.array(v, dtype=np.float64) for k, v in upd.items()})
        return
    acc["min"] = np.minimum(acc["min"], upd["min"])
    acc["max"] = np.maximum(acc["max"], upd["max"])
    acc["sum"] = acc["sum"] + upd["sum"]
    acc["sq"] = acc["sq"] + upd["sq"]


def _mean_std(acc, n):
    mean = acc["sum"] / n
    return mean, np.sqrt(np.maximum(acc["sq"] / n - mean ** 2, 0.0))


def _pair_spectra(clean, rain, rep, crop):
    """All training-style windows of a pair (and their mirror images), encoded by the
    representation -> {"rain", "diff", "clean"}, each (N, C, h', w')."""
    if crop:
        clean, rain = pad_to(clean, crop), pad_to(rain, crop)
        boxes = window_boxes(clean.shape[1], clean.shape[2], crop)
        c = np.stack([clean[:, y:y + crop, x:x + crop] for y, x in boxes])
        r = np.stack([rain[:, y:y + crop, x:x + crop] for y, x in boxes])
        c, r = np.concatenate([c, c[..., ::-1]]), np.concatenate([r, r[..., ::-1]])
    else:
        c, r = clean[None], rain[None]
    return rep.parts(c, r)


def _work(args):
    """One worker's share of the pairs -> (accumulators of the representation's channels, of
    the original magnitude/phase channels, error messages)."""
    rows, representation, crop, log, options = args
    rep = representations.make_transform(representation, crop, log, **options)
    original = representations.make_transform("magphase", crop, log)
    accs = {p: _Accumulator(bool(crop)) for p in PARTS}
    orig = {p: _Accumulator(False) for p in PARTS}
    errors = []
    for clean_path, rain_path in rows:
        try:
            clean, rain = load_pair(clean_path, rain_path)
        except ImageError as e:
            errors.append(str(e))
            continue
        for r, target in ((rep, accs), (original, orig)):
            for part, x in _pair_spectra(clean, rain, r, crop).items():
                target[part].add(x)
                target[part].n_images += 1
    return accs, orig, errors


def _channel_table(acc, keys):
    """{<key>_max, _min, _mean, _std, number_of_images, number_of_pixels} of one part."""
    mean, std = _mean_std(acc.ch, acc.n_pixels)
    entry = {}
    for stat, values in (("max", acc.ch["max"]), ("min", acc.ch["min"]), ("mean", mean),
                         ("std", std)):
        entry.update({f"{k}_{stat}": float(v) for k, v in zip(keys, values)})
    entry["number_of_images"] = acc.n_images
    entry["number_of_pixels"] = acc.n_pixels
    return entry


def compute_statistics(csv_path, representation, crop, log, workers, options, progress=True):
    """Stream over the pairs of `csv_path` -> (stats dict, per-frequency arrays or None, errors).

    `representation` is a registered name (representations.names(statistics_only=True)); the
    statistics are those of what it encodes, under its channel names, and beside them (under
    "original") the original system's magnitude/phase table. Never holds more than one chunk of
    pairs per worker in memory."""
    options = dict(options)
    rep = representations.make_transform(representation, crop, log, **options)
    pairs = read_pairs(csv_path)
    if not pairs:
        raise PairsError(f"{csv_path}: no pairs")
    chunk = max(1, min(16, len(pairs) // max(1, 4 * workers)))
    jobs = [(pairs[i:i + chunk], representation, crop, log, options)
            for i in range(0, len(pairs), chunk)]
    total = {p: _Accumulator(bool(crop)) for p in PARTS}
    original = {p: _Accumulator(False) for p in PARTS}
    errors = []
    bar = tqdm(total=len(pairs), desc="fft statistics", unit="pair", disable=not progress)
    if workers > 1:
        pool = ProcessPoolExecutor(workers)
        results = pool.map(_work, jobs)
    else:
        pool, results = None, map(_work, jobs)
    try:
        for job, (accs, orig, errs) in zip(jobs, results):
            for p in PARTS:
                total[p].merge(accs[p])
                original[p].merge(orig[p])
            errors += errs
            bar.update(len(job[0]))
    finally:
        bar.close()
        if pool:
            pool.shutdown()
    if total["rain"].n_images == 0:
        raise PairsError(f"{csv_path}: none of the {len(pairs)} pairs could be read")
    stats = {"settings": rep.stats_settings()}
    freq = {}
    for p in PARTS:
        acc = total[p]
        stats[p] = _channel_table(acc, rep.channel_names)
        if acc.freq is not None:
            f_mean, f_std = _mean_std(acc.freq, acc.n_freq)
            freq.update({f"{p}_min": acc.freq["min"], f"{p}_max": acc.freq["max"],
                         f"{p}_mean": f_mean, f"{p}_std": f_std})
    names = representations.get_class("magphase").channel_names
    stats["original"] = {p: _channel_table(original[p], names) for p in PARTS}
    stats["number_of_failed_pairs"] = len(errors)
    return stats, (freq or None), errors


def save_statistics(stats, freq, out_path):
    """Write stats JSON (and the per-frequency .npz beside it) atomically."""
    stats = dict(stats)
    if freq is not None:
        npz_path = os.path.splitext(out_path)[0] + ".npz"
        with atomic_path(npz_path) as tmp:
            with open(tmp, "wb") as f:
                np.savez(f, **{k: v.astype(np.float32) for k, v in freq.items()})
        stats["per_frequency"] = os.path.basename(npz_path)
    write_text(out_path, json.dumps(stats, indent=1) + "\n")


def load_statistics(path):
    """Read a stats JSON and its per-frequency arrays into one dict (arrays as float32 numpy)."""
    try:
        with open(path, encoding="utf-8") as f:
            stats = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise StatisticsError(f"{path}: cannot read statistics ({e}); recompute them with "
                              f"{SCRIPTS}") from e
    if not isinstance(stats, dict) or "settings" not in stats or "rain" not in stats:
        raise StatisticsError(f"{path}: not a statistics file of this repository; recompute it "
                              f"with {SCRIPTS} --csv PAIRS.csv --out STATS.json")
    stats["path"] = os.fspath(path)
    if stats.get("per_frequency"):
        npz = os.path.join(os.path.dirname(os.path.abspath(path)), stats["per_frequency"])
        try:
            with np.load(npz) as z:
                stats["per_frequency"] = {k: z[k] for k in z.files}
        except (OSError, ValueError) as e:
            raise StatisticsError(f"{npz}: per-frequency statistics missing or unreadable ({e}); "
                                  f"recompute with {SCRIPTS}") from e
    return stats
