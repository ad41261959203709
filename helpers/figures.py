"""Figures drawn by code: comparison grids with log-magnitude spectra."""
import os

import matplotlib

matplotlib.use("Agg")  # no screen on cluster nodes
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from helpers.images import atomic_path  # noqa: E402
from helpers.process import fft_image  # noqa: E402

LUMA = np.array([0.299, 0.587, 0.114])


def log_magnitude(img):
    """Centred log(1 + |FFT|) (orthonormal, as the model's) of an image's luminance, for display.
    img: uint8 (H, W, 3) (scaled to [0, 1]), or a float (H, W, 3) or (H, W) in image units
    ([0, 1] for images, [-1, 1] for differences of images)."""
    img = np.asarray(img)
    img = img / 255.0 if img.dtype == np.uint8 else img.astype(np.float64)
    y = img @ LUMA if img.ndim == 3 else img
    return np.log1p(np.abs(fft_image(y)))


def save_figure(fig, path, text=None):
    """Save atomically (the format follows the extension); `text` (a PNG's Description entry)
    records what the figure shows in a form a test can compare."""
    ext = os.path.splitext(str(path))[1].lstrip(".") or "png"
    # no "Software: matplotlib x.y" entry in a PNG: the bytes depend on the drawing only
    meta = {"Software": None, **({"Description": text} if text else {})} if ext == "png" \
        else None
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format=ext, dpi=110, bbox_inches="tight", metadata=meta)
    plt.close(fig)


def comparison_figure(rows, path, spectra=True, titles=("rain", "derained", "clean")):
    """rows: list of tuples of uint8 (H, W, 3) images, one tuple per example (e.g. rain,
    derained, clean). With spectra, each example gets a second row of log-magnitude spectra."""
    n_cols = len(rows[0])
    n_rows = len(rows) * (2 if spectra else 1)
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(3 * n_cols, 2.6 * n_rows), squeeze=False)
    for i, row in enumerate(rows):
        r = i * (2 if spectra else 1)
        specs = [log_magnitude(im) for im in row] if spectra else []
        # a shared colour scale from percentiles: the zero-frequency peak would make all else dark
        vmin = min(np.percentile(s, 1) for s in specs) if specs else None
        vmax = max(np.percentile(s, 99.9) for s in specs) if specs else None
        for j, im in enumerate(row):
            axes[r, j].imshow(im)
            axes[r, j].set_title(titles[j] if j < len(titles) else "", fontsize=9)
            if spectra:
                axes[r + 1, j].imshow(specs[j], cmap="magma", vmin=vmin, vmax=vmax)
                axes[r + 1, j].set_title(f"log |FFT| {titles[j] if j < len(titles) else ''}",
                                         fontsize=8)
    for ax in axes.ravel():
        ax.axis("off")
    fig.tight_layout()
    save_figure(fig, path)


# ============================================================================ figures for the README
# (make_figures.py draws them; each takes plain arrays / records and writes one file atomically)
def _smooth(values, frac=0.02):
    """Exponential moving average with a span of about `frac` of the points."""
    values = np.asarray(values, dtype=np.float64)
    if len(values) < 5:
        return values
    alpha = 2.0 / (max(2.0, frac * len(values)) + 1.0)
    out, acc = np.empty_like(values), values[0]
    for i, v in enumerate(values):
        acc = alpha * v + (1 - alpha) * acc
        out[i] = acc
    return out


def training_curves_figure(runs, path, title=None):
    """runs: {name: list of log.jsonl records}. Left: training loss (raw, faint, and smoothed);
    right: validation PSNR-Y, with the rainy input's PSNR-Y on the same pairs dashed."""
    fig, (ax_l, ax_v) = plt.subplots(1, 2, figsize=(12, 4.2))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    any_val, lowest = False, np.inf
    for i, (name, recs) in enumerate(runs.items()):
        c = colors[i % len(colors)]
        train = [r for r in recs if "loss" in r and not r.get("skipped")
                 and np.isfinite(r.get("loss", np.nan))]
        if train:
            steps = np.array([r["step"] for r in train])
            loss = np.array([r["loss"] for r in train], dtype=np.float64)
            lowest = min(lowest, float(loss.min()))
            ax_l.plot(steps, loss, color=c, alpha=0.25, lw=0.8)
            ax_l.plot(steps, _smooth(loss), color=c, lw=1.6, label=name)
        val = [r for r in recs if "val_psnr_y" in r]
        if val:
            any_val = True
            steps = [r["step"] for r in val]
            ax_v.plot(steps, [r["val_psnr_y"] for r in val], "o-", color=c, ms=3.5, lw=1.5,
                      label=name)
            base = [r.get("val_input_psnr_y") for r in val]
            if all(b is not None for b in base):
                if len(steps) == 1:
                    ax_v.axhline(base[0], color=c, ls="--", lw=1.1, label=f"{name}: rainy input")
                else:
                    ax_v.plot(steps, base, "--", color=c, lw=1.1, label=f"{name}: rainy input")
    ax_l.set_xlabel("optimiser step")
    if lowest > 0:  # MSE-type losses: a log scale shows their slow tail
        ax_l.set_ylabel("training loss (log scale)")
        ax_l.set_yscale("log")
    else:  # the PSNR loss (--loss psnr) is the windows' -PSNR in dB, negative
        ax_l.set_ylabel("training loss (--loss psnr: -PSNR in dB)" if lowest < 0 else
                        "training loss")
    ax_l.set_title("training loss (faint: logged values; solid: smoothed)", fontsize=10)
    ax_l.grid(alpha=0.3, which="both")
    ax_v.set_xlabel("optimiser step")
    ax_v.set_ylabel("PSNR-Y (dB)")
    ax_v.set_title("validation PSNR-Y (dashed: the rainy input)", fontsize=10)
    ax_v.grid(alpha=0.3)
    if not any_val:
        ax_v.text(0.5, 0.5, "no validation records in log.jsonl", ha="center", va="center",
                  transform=ax_v.transAxes, color="#777")
    for ax in (ax_l, ax_v):
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    if title:
        fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    save_figure(fig, path)


def zoom_box(a_u8, b_u8, zoom=2, stride=4):
    """(y, x, h, w) of the (H/zoom, W/zoom) box where a and b differ most (mean |Y difference|):
    the region a zoomed crop should show."""
    h_img, w_img = a_u8.shape[:2]
    h, w = max(1, h_img // zoom), max(1, w_img // zoom)
    lum = LUMA
    diff = np.abs(a_u8.astype(np.float64) @ lum - b_u8.astype(np.float64) @ lum)
    integral = np.pad(diff.cumsum(0).cumsum(1), ((1, 0), (1, 0)))
    best, arg = -1.0, (0, 0)
    for y in range(0, h_img - h + 1, stride):
        for x in range(0, w_img - w + 1, stride):
            s = integral[y + h, x + w] - integral[y, x + w] - integral[y + h, x] + integral[y, x]
            if s > best:
                best, arg = s, (y, x)
    return (*arg, h, w)


def zoom_comparison_figure(examples, path, titles, title=None, zoom=2, cell=3.3):
    """examples: list of dicts {"images": tuple of uint8 (H, W, 3), "captions": tuple of str
    (optional), "box": (y, x, h, w) (optional; default: zoom_box of the first two images)}.
    Each example gets a row of full images with the zoomed box outlined, and a row of the box
    enlarged `zoom` times (nearest-neighbour, so streaks are not smoothed away)."""
    from matplotlib.patches import Rectangle
    n_cols = len(examples[0]["images"])
    aspects = [ex["images"][0].shape[0] / ex["images"][0].shape[1] for ex in examples]
    heights = [a for a in aspects for _ in range(2)]
    fig, axes = plt.subplots(2 * len(examples), n_cols, squeeze=False, layout="constrained",
                             figsize=(cell * n_cols, cell * sum(heights) + 0.5 * len(examples)
                                      + (0.5 if title else 0)),
                             gridspec_kw={"height_ratios": heights})
    for i, ex in enumerate(examples):
        ims = ex["images"]
        y, x, h, w = ex.get("box") or zoom_box(ims[0], ims[1], zoom)
        caps = ex.get("captions") or titles
        for j, im in enumerate(ims):
            top, bottom = axes[2 * i, j], axes[2 * i + 1, j]
            top.imshow(im)
            top.add_patch(Rectangle((x - 0.5, y - 0.5), w, h, fill=False, ec="yellow", lw=1.2))
            top.set_title(caps[j] if j < len(caps) else "", fontsize=9)
            bottom.imshow(im[y:y + h, x:x + w], interpolation="nearest")
            bottom.set_title(f"{zoom}\u00d7 zoom", fontsize=8, color="#555")
    _save_image_grid(fig, axes, path, title, 10.5)


def _save_image_grid(fig, axes, path, title, fontsize):
    """A grid of images: no ticks, the title on top, saved atomically."""
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
    if title:
        fig.suptitle(title, fontsize=fontsize)
    save_figure(fig, path)


def spectra_figure(rain_u8, clean_u8, pred_u8, path, title=None):
    """Rain, the true change clean - rain, the predicted change ours - rain and the error
    ours - clean: luminance images (top) and their log-magnitude spectra (bottom); the three
    changes share one colour scale in each row, so their spectra compare directly."""
    f = lambda im: im.astype(np.float64) / 255.0
    lum = LUMA
    diffs = [f(clean_u8) - f(rain_u8), f(pred_u8) - f(rain_u8), f(pred_u8) - f(clean_u8)]
    names = ["true change: clean \u2212 rain", "predicted: ours \u2212 rain",
             "error: ours \u2212 clean"]
    specs = [log_magnitude(d) for d in diffs]
    lim = float(np.percentile(np.abs(np.stack([d @ lum for d in diffs[:2]])), 99.5)) or 1.0
    svmax = float(max(np.percentile(s, 99.9) for s in specs))
    fig, axes = plt.subplots(2, 4, figsize=(15, 7.6 * rain_u8.shape[0] / rain_u8.shape[1] + 1.2),
                             squeeze=False, layout="constrained")
    axes[0, 0].imshow(rain_u8)
    axes[0, 0].set_title("rain", fontsize=9)
    rain_spec = log_magnitude(rain_u8)
    axes[1, 0].imshow(rain_spec, cmap="magma", vmax=float(np.percentile(rain_spec, 99.9)))
    axes[1, 0].set_title("log |FFT| rain", fontsize=9)
    for j, (d, s, name) in enumerate(zip(diffs, specs, names), start=1):
        im = axes[0, j].imshow(d @ lum, cmap="RdBu_r", vmin=-lim, vmax=lim)
        axes[0, j].set_title(name, fontsize=9)
        sp = axes[1, j].imshow(s, cmap="magma", vmin=0, vmax=svmax)
        axes[1, j].set_title(f"log |FFT| {name.split(':')[0]}", fontsize=9)
    fig.colorbar(im, ax=axes[0, :].tolist(), shrink=0.8, label="\u0394 luminance")
    fig.colorbar(sp, ax=axes[1, :].tolist(), shrink=0.8, label="log(1 + |F|) of the changes")
    _save_image_grid(fig, axes, path, title, 11)


def speed_figure(rows, path, title=None):
    """rows: dicts with sampler, steps, seconds_per_image, psnr_y (optionally input_psnr_y and
    a "set" name). Left: PSNR-Y against sampling steps; right: against seconds per image."""
    groups = {}
    for r in rows:
        key = r["sampler"] if not r.get("set") else f"{r['sampler']} ({r['set']})"
        groups.setdefault(key, []).append(r)
    fig, (ax_s, ax_t) = plt.subplots(1, 2, figsize=(12, 4.2))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, (name, rs) in enumerate(sorted(groups.items())):
        rs = sorted(rs, key=lambda r: r["steps"])
        c = colors[i % len(colors)]
        steps = [r["steps"] for r in rs]
        secs = [r["seconds_per_image"] for r in rs]
        psnr = [r["psnr_y"] for r in rs]
        ax_s.plot(steps, psnr, "o-", color=c, label=name)
        ax_t.plot(secs, psnr, "o-", color=c, label=name)
        for s, t, p in zip(steps, secs, psnr):
            ax_t.annotate(str(s), (t, p), textcoords="offset points", xytext=(4, 3), fontsize=7,
                          color=c)
    inputs = sorted({round(float(r["input_psnr_y"]), 4) for r in rows
                     if r.get("input_psnr_y") is not None})
    for k, b in enumerate(inputs):
        for ax in (ax_s, ax_t):
            ax.axhline(b, color="gray", ls="--", lw=1,
                       label="rainy input" if (k == 0 and ax is ax_s) else None)
    ax_s.set_xscale("log", base=2)
    all_steps = sorted({r["steps"] for r in rows})
    if all_steps:
        from matplotlib.ticker import NullFormatter, ScalarFormatter
        ax_s.set_xticks(all_steps)
        ax_s.xaxis.set_major_formatter(ScalarFormatter())
        ax_s.xaxis.set_minor_formatter(NullFormatter())
    ax_s.set_xlabel("sampling steps (network evaluations)")
    ax_t.set_xscale("log")
    from matplotlib.ticker import FuncFormatter, NullFormatter
    ax_t.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax_t.xaxis.set_minor_formatter(NullFormatter())
    ax_t.margins(x=0.1)
    ax_t.set_xlabel("seconds per image (labels: steps)")
    for ax in (ax_s, ax_t):
        ax.set_ylabel("PSNR-Y (dB)")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8)
    if title:
        fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    save_figure(fig, path)
