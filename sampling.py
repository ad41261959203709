"""The one sampling and evaluation path: window tiling, deraining an image, deraining and scoring
a list of inputs. Training validation, derain.py, bench_sampling.py and make_figures.py all call it.

    derainer = checkpoint.load_derainer("runs/x/ckpt_00004000.pt", steps=20)
    pred_u8 = derainer(rain_u8, seed=hash_seed(...))            # any size
    report = derain_items(derainer, pairs_items("val.csv"), out_dir="out", score=True)
    print(report.summary)

A spectrum's meaning depends on the size of the window it was computed on, so an image is cut into
overlapping windows of the training crop (`window_starts`, the same tiling the statistics use),
each window is derained (batched), and the windows are blended back in image space with a smooth
weight, which leaves no seams. Beyond the image itself (a float64 output and weight map, about 4x
the image as float64: ~1.2 GB for 4000x3000), memory grows with the batch of windows only.
"""
import math
import time
from pathlib import Path

import numpy as np
import torch

from diffusion import sample
from helpers.images import (ImageError, output_names, read_picture, read_rgb, to_uint8,
                            write_picture)
from helpers.seeding import hash_seed

OVERLAP = 0.5  # fraction of a window shared with its neighbour when deraining
# The sampling settings a checkpoint's config holds (defaults in ddpm_conditional.launch()).
SAMPLE_KEYS = ("sampler", "sample_steps", "eta", "guidance", "clip_x0", "ensemble", "sample_batch",
               "coupled")


# ===================================================================== tiling
def window_starts(length, crop, overlap=0.0):
    """Start offsets of windows of `crop` covering [0, length), neighbours sharing at least
    `overlap` of a window: evenly spaced, the first at 0 and the last flush with the end.
    Statistics tile with overlap 0; deraining with OVERLAP."""
    if length <= crop:
        return [0]
    stride = max(1, int(crop * (1 - overlap)))
    n = math.ceil((length - crop) / stride) + 1
    return sorted({round(i * (length - crop) / (n - 1)) for i in range(n)})


def window_boxes(h, w, crop, overlap=0.0):
    """(y, x) of every window of an h x w image, row by row."""
    return [(y, x) for y in window_starts(h, crop, overlap) for x in window_starts(w, crop, overlap)]


def pad_to(img, crop):
    """Reflect-pad a (3, H, W) image so both sides are at least `crop` (small photos)."""
    _, h, w = img.shape
    ph, pw = max(0, crop - h), max(0, crop - w)
    if ph == 0 and pw == 0:
        return img
    return np.pad(img, ((0, 0), (0, ph), (0, pw)), mode="reflect" if min(h, w) > 1 else "edge")


def window_weight(crop):
    """(crop, crop) raised-cosine weight, positive everywhere: near 0 at a window's edge, where
    its neighbour is near its centre, so overlapping windows hand over smoothly. Weights are
    normalised by their sum, so a pixel covered by one window keeps that window's value."""
    w = np.sin(np.pi * (np.arange(crop) + 0.5) / crop) ** 2
    return np.outer(w, w)


def count_windows(h, w, crop, ensemble=1):
    return len(window_boxes(max(h, crop), max(w, crop), crop, OVERLAP)) * ensemble


def image_seed(seed, index):
    """Seed of image `index`'s generator: a function of (seed, index) alone, so an image's
    noise does not depend on the images derained before it."""
    return hash_seed("derain", int(seed), int(index))


# ===================================================================== one image
def pick_device(name):
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {name}: CUDA is not available on this machine")
    return device


def sample_settings(cfg, **overrides):
    """The sampling settings of a config (a checkpoint's or launch()'s), with flags that are not
    None overriding them."""
    missing = [k for k in SAMPLE_KEYS if k not in cfg and overrides.get(k) is None]
    if missing:
        raise KeyError(f"config lacks the sampling setting(s) {missing}")
    s = {k: cfg.get(k) for k in SAMPLE_KEYS}
    s.update({k: v for k, v in overrides.items() if v is not None})
    unknown = set(overrides) - set(SAMPLE_KEYS)
    if unknown:
        raise KeyError(f"unknown sampling setting(s) {sorted(unknown)}")
    return s


def steps_text(n):
    """'1 step', '2 steps'."""
    return f"{n} step" if int(n) == 1 else f"{n} steps"


def sampler_text(process, s):
    """How a process samples with settings s, for messages: "bridge, 2 steps", "ddim, 2 steps,
    eta 0.0" or "one pass" (a bridge has one sampler; regression has none)."""
    if process == "regression":
        return "one pass"
    if process == "bridge":
        return f"bridge, {steps_text(s['sample_steps'])}"
    return f"{s['sampler']}, {steps_text(s['sample_steps'])}, eta {s['eta']}"


class Derainer:
    """A trained network with everything deraining needs: the representation (encode the rainy
    windows, decode the generated targets), the diffusion and the sampling settings."""

    def __init__(self, model, representation, diffusion, settings, device="cpu", name=""):
        self.model, self.rep, self.diffusion = model, representation, diffusion
        self.settings, self.device, self.name = dict(settings), torch.device(device), name

    def describe(self):
        s = self.settings
        return (f"{self.name}: {self.rep.name}, {sampler_text(self.diffusion.name, s)}, "
                f"guidance {s['guidance']}, clip_x0 {s['clip_x0']}, ensemble {s['ensemble']}")

    @torch.no_grad()
    def derain(self, rain, generator=None, progress=None):
        """Derain one image: float (3, H, W) in [0, 1] -> float64 (3, H, W), not clipped.

        Windows are derained in batches of settings['sample_batch']; settings['ensemble']
        samples per window are averaged in image space (the mean derained image). With
        settings['coupled'], all windows of the image are sampled together and at every step
        their x0 estimates are blended in image space and re-encoded, so that neighbouring
        windows agree (on their low frequencies above all) before the next step."""
        s, crop = self.settings, self.rep.crop
        _, h0, w0 = rain.shape
        rain = pad_to(np.asarray(rain, np.float64), crop)
        boxes = window_boxes(rain.shape[1], rain.shape[2], crop, OVERLAP)
        # each window's initial noise comes from its own seed, so with DDIM (eta = 0) the result
        # does not depend on how the windows are batched
        base = int(torch.randint(0, 2 ** 62, (1,), generator=generator,
                                 device=generator.device if generator is not None else "cpu"))
        was_training = self.model.training
        self.model.eval()
        try:
            if s.get("coupled"):
                out = np.zeros_like(rain)
                for k in range(s["ensemble"]):
                    out += self._coupled(rain, boxes, base + k * len(boxes), generator, progress)
                out /= s["ensemble"]
            else:
                out = self._independent(rain, boxes, base, generator, progress)
        finally:
            self.model.train(was_training)
        return out[:, :h0, :w0]

    def _sample(self, model, windows, seeds, generator, hook=None):
        """Sample the generated targets of a stack of rainy windows (B, 3, crop, crop)."""
        s, rep = self.settings, self.rep
        dtype = next(self.model.parameters()).dtype
        _, cond = rep.encode(None, windows)  # (B, C, h', w')
        cond = torch.from_numpy(np.ascontiguousarray(cond)).to(self.device, dtype)
        x_T = torch.stack([torch.randn(cond.shape[1:], dtype=dtype, generator=torch.Generator()
                                       .manual_seed(hash_seed("window", k))) for k in seeds])
        start = None
        if getattr(self.diffusion, "needs_start", False):
            start = torch.from_numpy(np.ascontiguousarray(rep.encode(windows, windows)[0]))
            start = start.to(self.device, dtype)
        return sample(model, cond, self.diffusion, s["sampler"], s["sample_steps"], s["eta"],
                      s["guidance"], generator, s["clip_x0"] or None, x_T=x_T, start=start,
                      hook=hook)

    def _independent(self, rain, boxes, base, generator, progress):
        s, crop = self.settings, self.rep.crop
        jobs = [box for box in boxes for _ in range(s["ensemble"])]
        weight = window_weight(crop)
        out, norm = np.zeros_like(rain), np.zeros(rain.shape[1:])
        for i in range(0, len(jobs), s["sample_batch"]):
            chunk = jobs[i:i + s["sample_batch"]]
            windows = np.stack([rain[:, y:y + crop, x:x + crop] for y, x in chunk])
            gen = self._sample(self.model, windows, [(base, i + k) for k in range(len(chunk))],
                               generator)
            derained = self.rep.decode(gen.double().cpu().numpy(), windows)  # (B, 3, c, c)
            for (y, x), d in zip(chunk, derained):
                out[:, y:y + crop, x:x + crop] += d * weight
                norm[y:y + crop, x:x + crop] += weight
            if progress is not None:
                progress.update(len(chunk))
        out /= norm  # in place: no second float64 copy of a large image
        return out

    def _coupled(self, rain, boxes, base, generator, progress):
        crop, rep = self.rep.crop, self.rep
        weight = window_weight(crop)
        windows = np.stack([rain[:, y:y + crop, x:x + crop] for y, x in boxes])
        norm = np.zeros(rain.shape[1:])
        for y, x in boxes:
            norm[y:y + crop, x:x + crop] += weight
        blended = {}

        def blend(x0, t):  # x0 estimates of all windows -> one image -> its windows, re-encoded
            images = rep.decode(x0.double().cpu().numpy(), windows)
            img = np.zeros_like(rain)
            for (y, x), d in zip(boxes, images):
                img[:, y:y + crop, x:x + crop] += d * weight
            img /= norm
            blended["image"] = img
            agreed = np.stack([img[:, y:y + crop, x:x + crop] for y, x in boxes])
            return torch.from_numpy(rep.encode(agreed, windows)[0]).to(x0.device, x0.dtype)

        self._sample(_Chunked(self.model, self.settings["sample_batch"]), windows,
                     [(base, k) for k in range(len(boxes))], generator, hook=blend)
        if progress is not None:
            progress.update(len(boxes))
        return blended["image"]

    def __call__(self, rain_u8, seed=0, progress=None):
        """uint8 (H, W, 3) -> derained uint8 (H, W, 3); the noise comes from `seed` alone."""
        g = torch.Generator(device=self.device).manual_seed(int(seed))
        pred = self.derain(rain_u8.transpose(2, 0, 1) / 255.0, g, progress)
        return to_uint8(pred)  # rounds and clips to [0, 255]


class _Chunked(torch.nn.Module):
    """The model called on a large batch in pieces of `size` (memory stays bounded)."""

    def __init__(self, model, size):
        super().__init__()
        self.model, self.size = model, int(size)

    def forward(self, x, t, cond):
        return torch.cat([self.model(x[i:i + self.size], t[i:i + self.size],
                                     cond[i:i + self.size]) for i in range(0, len(x), self.size)])


# ===================================================================== many images
class Item:
    """One image to derain: its path, its clean target (a path; from a pairs CSV or a target
    folder) or why it has none, and its output name (a file stem, unique within the run)."""

    def __init__(self, path, target=None, name=None, target_error=None):
        self.path, self.target, self.target_error = Path(path), target, target_error
        self.name = name or self.path.stem

    def __repr__(self):
        return f"Item({str(self.path)!r}, target={self.target!r}, name={self.name!r})"


def pairs_items(csv, limit=None):
    """Items (rainy image, clean target) of a pairs CSV, named as derain.py names them."""
    from helpers.statistics import read_pairs
    pairs = read_pairs(csv)
    items = [Item(rain, clean) for clean, rain in (pairs[:limit] if limit else pairs)]
    return assign_names(items)


def assign_names(items):
    """Give every item its unique output stem (helpers.images.output_names)."""
    for it, name in zip(items, output_names([it.path for it in items])):
        it.name = name
    return items


class Report:
    """What derain_items did: scored rows, failures (messages naming the file), the first few
    (rain, ours, clean) triples for a figure, and timing."""

    def __init__(self):
        self.rows, self.failed, self.unscored, self.shown = [], [], [], []
        self.n_done, self.seconds = 0, 0.0

    @property
    def seconds_per_image(self):
        return self.seconds / max(1, self.n_done)

    @property
    def summary(self):
        """Means over the scored images (ours and, under "baseline", the rainy input)."""
        from helpers.metrics import summarize
        return summarize(self.rows, baseline=True, n_failed=len(self.failed) + len(self.unscored))


def score_item(item, rain_u8, pred_u8):
    """Score one output and its rainy input against the item's target -> row; raises ValueError
    (ImageError included) with a message naming the file when it cannot be scored."""
    from helpers.metrics import BASELINE_PREFIX, score_pair
    if item.target is None:
        raise ValueError(item.target_error or f"{item.path}: no target (not from a pairs CSV, "
                         "no --eval DIR): not scored")
    target_u8 = read_rgb(item.target)
    if target_u8.shape != pred_u8.shape:
        raise ValueError(f"{item.path} is {pred_u8.shape[1]}x{pred_u8.shape[0]} but its target "
                         f"{item.target} is {target_u8.shape[1]}x{target_u8.shape[0]}: not scored")
    ours, base = score_pair(pred_u8, target_u8), score_pair(rain_u8, target_u8)
    return {"name": item.name, "pred": f"{item.name}.png", "target": str(item.target), **ours,
            "input": str(item.path), **{BASELINE_PREFIX + k: v for k, v in base.items()}}


def derain_items(derainer, items, out_dir=None, score=False, seed=0, progress=True, say=print,
                 keep=0):
    """Derain every item with derainer (item i's noise from image_seed(seed, i)), write
    OUT/<name>.png when out_dir is given, score each against its target when `score`, keep the
    first `keep` (rain, ours, clean) triples. A bad file is reported with say() and skipped.
    Returns a Report."""
    from tqdm import tqdm
    report, t0 = Report(), time.time()
    out_dir = Path(out_dir) if out_dir else None
    bar = tqdm(total=len(items), desc="derain", unit="img", disable=not progress,
               dynamic_ncols=True)
    try:
        for index, it in enumerate(items):
            bar.set_postfix_str(it.name, refresh=False)
            try:
                pic = read_picture(it.path)  # any ordinary mode; written back in its own form
                w, h = pic.size
                s = derainer.settings
                n_win = count_windows(h, w, derainer.rep.crop, s["ensemble"])
                inner = tqdm(total=n_win, desc=f"  {it.name}", unit="win", leave=False,
                             disable=not progress or n_win <= s["sample_batch"],
                             dynamic_ncols=True)
                try:
                    g = torch.Generator(device=derainer.device).manual_seed(
                        image_seed(seed, index))
                    pred = derainer.derain(pic.rgb.transpose(2, 0, 1), g, progress=inner)
                finally:
                    inner.close()
                if out_dir is not None:
                    write_picture(out_dir / f"{it.name}.png", pic.restore(pred.transpose(1, 2, 0)))
                pred_u8, rain_u8 = to_uint8(pred), pic.rgb_u8()
                del pred
                report.n_done += 1
            except torch.cuda.OutOfMemoryError as e:
                say(f"error: {it.path}: out of GPU memory ({str(e).splitlines()[0]}); try a "
                    "smaller --batch-size")
                report.failed.append(str(it.path))
                bar.update(1)
                continue
            except (ImageError, OSError, ValueError, MemoryError) as e:
                msg = str(e) or type(e).__name__
                say(f"error: {msg if str(it.path) in msg else f'{it.path}: {msg}'}")
                report.failed.append(str(it.path))
                bar.update(1)
                continue
            if score:
                try:
                    report.rows.append(score_item(it, rain_u8, pred_u8))
                    if len(report.shown) < keep:
                        report.shown.append((rain_u8, pred_u8, read_rgb(it.target)))
                except ValueError as e:
                    msg = str(e)
                    if str(it.path) not in msg and str(it.target) not in msg:
                        msg = f"{it.path}: {msg}: not scored"
                    say(f"error: {msg}")
                    report.unscored.append(str(it.path))
            bar.update(1)
    finally:
        bar.close()
    report.seconds = time.time() - t0
    return report
