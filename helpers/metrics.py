"""PSNR and SSIM on the Y channel, as the deraining literature (Restormer, MPRNet) reports them.

Protocol (see ../shared/data/README.md):
    Y     ITU-R BT.601 luma as MATLAB's rgb2ycbcr computes it on uint8 images:
          Y = 16 + (65.481 R + 128.553 G + 24.966 B) / 255, R, G, B in 0..255, rounded to an
          integer (computed exactly in integers, halves rounded up like MATLAB's uint8 cast),
          so Y is in 16..235.
    PSNR  10 log10(255^2 / MSE) on Y (peak 255, not 219). Identical images have MSE 0 and
          PSNR = inf (float('inf')), which also makes any mean that includes them inf.
    SSIM  Wang et al. 2004 on Y: 11x11 Gaussian window with sigma 1.5, K1 = 0.01, K2 = 0.03,
          L = 255, population (not sample) covariances, mean of the SSIM map over the valid
          region, i.e. the positions where the whole window lies inside the image.

SSIM is scikit-image's structural_similarity(gaussian_weights=True, sigma=1.5,
use_sample_covariance=False, data_range=255). Checked against scikit-image 0.26's source: with
gaussian_weights it filters with truncate=3.5, so the kernel radius is int(3.5 * 1.5 + 0.5) = 5,
an 11x11 window (the 1-D kernel is normalised over its 11 taps, so the separable window equals
MATLAB's normalised fspecial('gaussian', 11, 1.5)); it filters the whole image with 'reflect'
padding, then crops (win_size - 1) // 2 = 5 pixels from every border before averaging. The
values left are exactly those of a 'valid' filtering (MATLAB's filter2(w, x, 'valid')), so the
padding never enters the mean. tests/test_metrics.py checks this against a direct 'valid'
implementation. Wang's ssim.m downsamples by round(min(H, W) / 256); for the 481x321 and
480x320 test images that factor is 1, so no downsampling is done here (nor by the literature's
Python code).

Use:
    score_pair(pred, target)                -> {"psnr_y", "ssim_y", "psnr_rgb", "hf_err_db",
                                                "hf_bias_db"}
    score_folders(pred_dir, target_dir, input_dir=None, workers=None) -> FolderScores
    write_scores_csv(result.rows, "per_image.csv")
    print(format_summary(result.summary))

The command line over it is tools/score.py (python -m tools.score PRED_DIR TARGET_DIR).
"""
import csv
import dataclasses
import math
import os
from concurrent.futures import ProcessPoolExecutor

import numpy as np
from skimage.metrics import structural_similarity

from helpers.errors import InputError
from helpers.images import ImageError, atomic_path, is_image_file, output_names, read_rgb
from helpers.pairs import read_pairs

PEAK = 255.0
SSIM_SIGMA = 1.5
METRICS = ("psnr_y", "ssim_y", "psnr_rgb", "hf_err_db", "hf_bias_db")
SPECTRAL_BANDS = 8  # rings of equal width in radial frequency, 0 to 0.5 cycles per pixel
HIGH_BANDS = slice(4, None)  # the upper half of them (0.25 to 0.5 cycles per pixel)
BASELINE_PREFIX = "input_"  # per-image baseline columns: input_psnr_y, input_ssim_y, ...

# BT.601 coefficients times 1000 and the divisor 255 * 1000: exact integer arithmetic.
_Y_COEFFS = np.array([65481, 128553, 24966], dtype=np.int64)
_Y_DIV = 255000


# ---------------------------------------------------------------- single images
def _check_rgb_u8(img, what="image"):
    img = np.asarray(img)
    if img.dtype != np.uint8:
        raise TypeError(f"{what}: expected a uint8 RGB array, got dtype {img.dtype} (convert with "
                        "helpers.images.to_uint8 first)")
    if img.ndim != 3 or img.shape[2] != 3:
        raise InputError(f"{what}: expected shape (H, W, 3), got {img.shape}")
    return img


def rgb_to_y(img_u8):
    """uint8 (H, W, 3) RGB -> (H, W) float64 BT.601 luma, integer-valued in 16..235, as
    MATLAB's rgb2ycbcr on uint8: round(16 + (65.481 R + 128.553 G + 24.966 B) / 255)."""
    img = _check_rgb_u8(img_u8)
    k = img.astype(np.int64) @ _Y_COEFFS  # 1000 * (65.481 R + 128.553 G + 24.966 B)
    return (16 + (k + _Y_DIV // 2) // _Y_DIV).astype(np.float64)  # round half up, exactly


def psnr_from_mse(mse, peak=PEAK):
    """10 log10(peak^2 / mse) in dB; inf for mse 0 (peak 255 for uint8, 1 for [0, 1] floats)."""
    mse = float(mse)
    if mse == 0:
        return math.inf
    return float(10.0 * np.log10(peak ** 2 / mse))


def _psnr(a, b):
    return psnr_from_mse(np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2))


def _check_pair(pred, target):
    pred = _check_rgb_u8(pred, "prediction")
    target = _check_rgb_u8(target, "target")
    if pred.shape != target.shape:
        raise InputError(f"prediction is {_size(pred)} but target is {_size(target)}; "
                         "they must have the same size")
    return pred, target


def _size(img):
    return f"{img.shape[1]}x{img.shape[0]}"


def psnr_y(pred_u8, target_u8):
    """PSNR in dB on the Y channel, peak 255; inf for identical Y channels."""
    pred, target = _check_pair(pred_u8, target_u8)
    return _psnr(rgb_to_y(pred), rgb_to_y(target))


def psnr_rgb(pred_u8, target_u8):
    """PSNR in dB over all three RGB channels, peak 255; inf for identical images."""
    pred, target = _check_pair(pred_u8, target_u8)
    return _psnr(pred, target)


def _ssim(y1, y2):
    if min(y1.shape) < 11:
        raise InputError(f"image is {y1.shape[1]}x{y1.shape[0]}, smaller than SSIM's 11x11 window")
    return float(structural_similarity(y1, y2, gaussian_weights=True, sigma=SSIM_SIGMA,
                                       use_sample_covariance=False, data_range=PEAK))


def ssim_y(pred_u8, target_u8):
    """SSIM (Wang et al. 2004) on the Y channel; 1.0 for identical images. See module doc."""
    pred, target = _check_pair(pred_u8, target_u8)
    return _ssim(rgb_to_y(pred), rgb_to_y(target))


def _ring_index(h, w, bands):
    """The ring of each frequency of an (h, w) FFT: rings of equal width in radial frequency,
    0 to 0.5 cycles per pixel -> (h, w) ints; the corners beyond 0.5 get `bands` and above."""
    radius = np.hypot(*np.meshgrid(np.fft.fftfreq(h), np.fft.fftfreq(w), indexing="ij"))
    return (radius / 0.5 * bands).astype(int)


def band_power_db(y, bands=SPECTRAL_BANDS):
    """The radially averaged power spectrum of a luma image (H, W), in dB per ring: the mean
    removed, a 2-D Hann window against the leakage of the image's borders, |FFT|^2 averaged over
    rings of equal width in radial frequency from 0 to 0.5 cycles per pixel -> (bands,)."""
    y = np.asarray(y, np.float64)
    h, w = y.shape
    window = np.outer(np.hanning(h), np.hanning(w))
    power = np.abs(np.fft.fft2((y - y.mean()) * window)) ** 2 / window.sum() ** 2
    ring = np.minimum(_ring_index(h, w, bands), bands)  # >= 0.5 (the corners): out
    sums = np.bincount(ring.ravel(), power.ravel(), bands + 1)[:bands]
    counts = np.bincount(ring.ravel(), minlength=bands + 1)[:bands]
    return 10 * np.log10(sums / np.maximum(counts, 1) + 1e-12)


def spectral_error(pred_u8, target_u8):
    """How the output's high frequencies compare with the clean image's: the radially
    averaged power spectra of the two Y channels (band_power_db) in the upper half of the rings
    (0.25 to 0.5 cycles per pixel: fine detail, and rain streaks) -> {"hf_err_db": the mean
    absolute difference in dB (0 for the same spectrum; lower is better), "hf_bias_db": the mean
    signed difference (negative: energy missing, a blurred output; positive: energy added,
    rain or noise left)}. PSNR rewards the mean estimate, which blurs; this says whether the
    detail is there, in its right amount, whatever its exact phase. Needs no trained weights."""
    pred, target = _check_pair(pred_u8, target_u8)
    d = (band_power_db(rgb_to_y(pred)) - band_power_db(rgb_to_y(target)))[HIGH_BANDS]
    return {"hf_err_db": float(np.mean(np.abs(d))), "hf_bias_db": float(np.mean(d))}


def error_by_band(pred_u8, target_u8, bands=SPECTRAL_BANDS):
    """Where in frequency the error lies: the MSE of the Y channels split over rings of equal
    width in radial frequency (0 to 0.5 cycles per pixel, the corners beyond 0.5 in the last
    ring) -> (bands,) float64 whose sum is the MSE that PSNR-Y uses. By Parseval's theorem the
    mean squared error is the sum of |FFT(pred - target)|^2 over the frequencies divided by the
    pixel count squared, so each ring's part of that sum is its share of the MSE, exactly (no
    window: a window would break the sum). Ring 0 holds the mean (a brightness error); a blurred
    output's error sits in the upper rings. Compare two methods band by band to see which
    frequencies a PSNR gap comes from."""
    pred, target = _check_pair(pred_u8, target_u8)
    err = rgb_to_y(pred).astype(np.float64) - rgb_to_y(target).astype(np.float64)
    h, w = err.shape
    power = np.abs(np.fft.fft2(err)) ** 2 / float(h * w) ** 2
    ring = np.minimum(_ring_index(h, w, bands), bands - 1)
    return np.bincount(ring.ravel(), power.ravel(), bands)


def rain_left(pred_u8, target_u8, rain_u8):
    """How much of the rain an output keeps, and how good the rest of it is. The output's error
    on the Y channel, e = pred - target, is split along the rain layer r = rain - target:
    e = a r + e', with a = <e, r> / <r, r> the fraction of the rain left (0: removed, 1: all
    left, negative: over-removed) and e' the error orthogonal to it (blur, colour, artefacts)
    -> {"rain_left": a, "rest_psnr_y": the PSNR-Y of e' alone (dB; the output's PSNR-Y had it
    kept none of the rain's pattern)}. A lower HF-err can mean detail restored or rain left;
    this tells the two apart. Needs no trained weights; nan when the rainy image is the clean
    one."""
    pred, target = _check_pair(pred_u8, target_u8)
    rain = _check_rgb_u8(rain_u8, "rainy image")
    if rain.shape != target.shape:
        raise InputError(f"rainy image is {_size(rain)} but target is {_size(target)}; they "
                         "must have the same size")
    yt = rgb_to_y(target).astype(np.float64)
    e = rgb_to_y(pred).astype(np.float64) - yt
    r = rgb_to_y(rain).astype(np.float64) - yt
    rr = float(np.sum(r * r))
    a = float(np.sum(e * r)) / rr if rr > 0 else math.nan
    rest = e - a * r if rr > 0 else e
    return {"rain_left": a, "rest_psnr_y": psnr_from_mse(float(np.mean(rest * rest)))}


def score_pair(pred, target):
    """All metrics for one pair -> {"psnr_y", "ssim_y", "psnr_rgb", "hf_err_db", "hf_bias_db"}
    (floats; PSNR may be inf).

    `pred` and `target` are uint8 (H, W, 3) arrays or image paths (read with read_rgb, which
    raises ImageError naming a bad file). Raises ValueError when the sizes differ."""
    if isinstance(pred, (str, os.PathLike)):
        pred = read_rgb(pred)
    if isinstance(target, (str, os.PathLike)):
        target = read_rgb(target)
    pred, target = _check_pair(pred, target)
    yp, yt = rgb_to_y(pred), rgb_to_y(target)
    return {"psnr_y": _psnr(yp, yt), "ssim_y": _ssim(yp, yt), "psnr_rgb": _psnr(pred, target),
            **spectral_error(pred, target)}


# ---------------------------------------------------------------- folders
@dataclasses.dataclass
class FolderScores:
    """Result of score_folders.

    rows     one dict per scored image, sorted by name: name, pred, target (file names),
             psnr_y, ssim_y, psnr_rgb and, with an input folder, input (file name),
             input_psnr_y, input_ssim_y, input_psnr_rgb (the input scored against the target).
    summary  {"n": images scored, "n_failed": len(errors), "psnr_y", "ssim_y", "psnr_rgb":
             means over the scored images (nan when none), "baseline": the same three means for
             the inputs over the same images, or None without an input folder}.
    errors   one message per failed image or unpaired file, each naming the file.
    """
    rows: list
    summary: dict
    errors: list

    @property
    def failed(self):
        return bool(self.errors)


def index_by_stem(folder):
    """The image files of `folder` by name stem -> ({stem: path}, {stem: [file names]} of the
    stems that more than one file has; those are left out of the first dict)."""
    found, dupes = {}, {}
    for name in sorted(os.listdir(folder)):
        if name.startswith(".") or not is_image_file(name):
            continue
        stem = os.path.splitext(name)[0]
        if stem in dupes:
            dupes[stem].append(name)
        elif stem in found:
            dupes[stem] = [os.path.basename(found.pop(stem)), name]
        else:
            found[stem] = os.path.join(folder, name)
    return found, dupes


def _index_by_stem(folder, role, errors):
    """{stem: file name} for the image files of `folder`; duplicate stems are errors."""
    if not os.path.isdir(folder):
        raise NotADirectoryError(f"{folder}: {role} folder not found")
    found, dupes = index_by_stem(folder)
    for stem, names in dupes.items():
        errors.append(f"{os.path.join(folder, names[0])}: ambiguous {role} files with the same "
                      f"name stem {stem!r}: {', '.join(names)}; keep only one")
    return {stem: os.path.basename(path) for stem, path in found.items()}


def _pair_files(pred_dir, target_dir, input_dir):
    """Pair the folders' files by name stem. Returns (tasks, errors)."""
    errors = []
    targets = _index_by_stem(target_dir, "target", errors)
    preds = _index_by_stem(pred_dir, "prediction", errors)
    inputs = _index_by_stem(input_dir, "input", errors) if input_dir is not None else None
    tasks = []
    for stem, tname in targets.items():
        if stem not in preds:
            errors.append(f"{os.path.join(target_dir, tname)}: no prediction named {stem}.* in "
                          f"{pred_dir}")
            continue
        iname = None
        if inputs is not None:
            if stem not in inputs:
                errors.append(f"{os.path.join(target_dir, tname)}: no input named {stem}.* in "
                              f"{input_dir}")
                continue
            iname = inputs[stem]
        tasks.append((stem, os.path.join(pred_dir, preds[stem]), os.path.join(target_dir, tname),
                      None if iname is None else os.path.join(input_dir, iname)))
    for stem, pname in preds.items():
        if stem not in targets:
            errors.append(f"{os.path.join(pred_dir, pname)}: no target named {stem}.* in "
                          f"{target_dir}")
    return tasks, errors


def _pairs_tasks(pred_dir, csv_path):
    """Tasks for a pairs CSV: the prediction of each rainy image is PRED_DIR/<its output
    name>.png (helpers.images.output_names: as derain.py and the final evaluation name them),
    its target the clean column, the rainy image the baseline."""
    pairs = read_pairs(csv_path)
    names = output_names([rain for _, rain in pairs])
    tasks, errors = [], []
    for name, (clean, rain) in zip(names, pairs):
        pred = os.path.join(pred_dir, f"{name}.png")
        if not os.path.exists(pred):
            errors.append(f"{pred}: no prediction for {rain} (derain.py names it {name}.png)")
            continue
        tasks.append((name, pred, clean, rain))
    return tasks, errors


def _score_task(task):
    """Worker: score one (name, pred, target, input) task -> (row, None) or (None, message)."""
    name, pred_path, target_path, input_path = task
    try:
        target = read_rgb(target_path)
        pred = read_rgb(pred_path)
        if pred.shape != target.shape:
            raise InputError(f"{pred_path}: prediction is {_size(pred)} but target "
                             f"{target_path} is {_size(target)}")
        row = {"name": name, "pred": os.path.basename(pred_path),
               "target": os.path.basename(target_path), **score_pair(pred, target)}
        if input_path is not None:
            rain = read_rgb(input_path)
            if rain.shape != target.shape:
                raise InputError(f"{input_path}: input is {_size(rain)} but target "
                                 f"{target_path} is {_size(target)}")
            row["input"] = os.path.basename(input_path)
            row.update({BASELINE_PREFIX + k: v for k, v in score_pair(rain, target).items()})
        return row, None
    except ImageError as e:
        return None, str(e)  # already names the file
    except InputError as e:
        msg = str(e)
        return None, msg if pred_path in msg else f"{pred_path}: {msg}"


def _mean(values):
    return float(np.mean(values)) if values else math.nan


def default_workers():
    """Worker processes used when none are given: the CPU count, at most 8."""
    return max(1, min(8, os.cpu_count() or 1))


def pair_tasks(pred_dir, target_dir, input_dir=None):
    """The (name, prediction, target, input or None) paths to score, paired as score_folders
    describes (`target_dir` a folder of clean images or a pairs CSV), and the messages of the
    files that could not be paired -> (tasks, errors)."""
    if str(target_dir).lower().endswith(".csv"):
        return _pairs_tasks(os.fspath(pred_dir), target_dir)
    return _pair_files(os.fspath(pred_dir), os.fspath(target_dir),
                       None if input_dir is None else os.fspath(input_dir))


def score_folders(pred_dir, target_dir, input_dir=None, workers=None):
    """Score every prediction in `pred_dir` against the target of the same name stem in
    `target_dir` (rain-001.png pairs rain-001.jpg); with `input_dir`, also score the rainy input
    of the same stem against the target (the do-nothing baseline). `target_dir` may instead be a
    pairs CSV: then each rainy image's prediction is found by the name derain.py gives it, its
    target is its clean image and the baseline is the rainy image itself.

    A target without a prediction (or input), a prediction without a target, two files with the
    same stem in one folder, an unreadable file or a size mismatch is recorded in `errors` (the
    message names the file) and that image is left out of every mean, so ours and the baseline
    are averaged over the same images. Only a missing folder raises (NotADirectoryError).
    `workers` processes score the pairs (default: default_workers(); 1 runs in this process).
    Returns a FolderScores (rows, summary, errors)."""
    tasks, errors = pair_tasks(pred_dir, target_dir, input_dir)
    if str(target_dir).lower().endswith(".csv"):
        input_dir = "the pairs CSV's rainy column"
    workers = default_workers() if workers is None else max(1, int(workers))
    workers = min(workers, max(1, len(tasks)))
    if workers == 1:
        results = [_score_task(t) for t in tasks]
    else:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            results = list(pool.map(_score_task, tasks, chunksize=max(1, len(tasks) // (4 * workers))))
    rows = []
    for row, err in results:
        if err is None:
            rows.append(row)
        else:
            errors.append(err)
    rows.sort(key=lambda r: r["name"])
    return FolderScores(rows=rows, summary=summarize(rows, input_dir is not None, len(errors)),
                        errors=errors)


def summarize(rows, baseline=False, n_failed=0):
    """Means of per-image rows: {"n", "n_failed", and each of METRICS (nan when no row),
    "baseline": the same means of the input_* columns, or None without a baseline}."""
    summary = {"n": len(rows), "n_failed": n_failed,
               **{k: _mean([r[k] for r in rows]) for k in METRICS}, "baseline": None}
    if baseline:
        summary["baseline"] = {k: _mean([r[BASELINE_PREFIX + k] for r in rows]) for k in METRICS}
    return summary


# ---------------------------------------------------------------- output
def write_scores_csv(rows, path):
    """Write per-image rows (dicts, e.g. FolderScores.rows) to a CSV file atomically. Columns:
    name, pred, target, the METRICS, then input and input_* when present, then any
    other keys in first-seen order. Floats keep full precision; an infinite PSNR is 'inf'."""
    preferred = ["name", "pred", "target", *METRICS, "input", *(BASELINE_PREFIX + k for k in METRICS)]
    keys = []
    for row in rows:
        keys.extend(k for k in row if k not in keys)
    columns = [k for k in preferred if k in keys] + [k for k in keys if k not in preferred]
    with atomic_path(path) as tmp:
        with open(tmp, "w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=columns, restval="")
            writer.writeheader()
            writer.writerows(rows)


def format_summary(summary, rgb=False):
    """A plain-text table of a summary from score_folders: mean PSNR-Y (dB), SSIM-Y, the
    high-frequency spectral error (spectral_error, dB: lower is better) and the image count for
    the predictions, and with a baseline also the input and the gain over it.
    `rgb` adds a PSNR-RGB column. Ends with the failure count when there were failures."""
    cols = [("PSNR-Y", "psnr_y", "{:.4f}", "{:+.4f}"), ("SSIM-Y", "ssim_y", "{:.4f}", "{:+.4f}"),
            ("HF-err dB", "hf_err_db", "{:.3f}", "{:+.3f}")]
    if rgb:
        cols.append(("PSNR-RGB", "psnr_rgb", "{:.4f}", "{:+.4f}"))
    lines = [f"{'':<18}" + "".join(f"{h:>10}" for h, *_ in cols) + f"{'n':>6}"]

    def line(label, values, fmt_index):
        cells = "".join(f"{cols[i][fmt_index].format(values[k]):>10}"
                        for i, (_, k, *_) in enumerate(cols))
        return f"{label:<18}{cells}{summary['n']:>6}"

    lines.append(line("prediction", summary, 2))
    base = summary.get("baseline")
    if base is not None:
        lines.append(line("input (baseline)", base, 2))
        gain = {k: summary[k] - base[k] for _, k, *_ in cols}
        lines.append(line("gain", gain, 3))
    if summary.get("n_failed"):
        lines.append(f"FAILED: {summary['n_failed']} image(s) not scored (see errors above)")
    return "\n".join(lines)
