"""The one sampling and evaluation path: window tiling, deraining an image, deraining and scoring
a list of inputs. Training validation, derain.py, bench_sampling.py and make_figures.py all call it.

    derainer = checkpoint.load_derainer("runs/x/ckpt_00004000.pt", steps=20)
    pred_u8 = derainer(rain_u8, seed=hash_seed(...))            # any size
    report = derain_items(derainer, pairs_items("val.csv"), out_dir="out", score=True)
    print(report.summary)

A spectrum's meaning depends on the size of the window it was computed on, so an image is cut into
overlapping windows of the training crop (`window_starts`, the same tiling the statistics use),
each window is derained (batched), and the windows are blended back in image space with a smooth
weight, which leaves no seams. All of it runs on the model's device in float32; beyond the image
itself (input, output and weight map: about 3x the image as float32, ~0.4 GB for 4000x3000),
memory grows with the batch of windows only.
"""
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from diffusion import sample
from helpers.errors import InputError
from helpers.images import (ImageError, output_names, read_picture, read_rgb, to_uint8,
                            write_picture)
from helpers.metrics import BASELINE_PREFIX, score_pair, summarize
from helpers.pairs import read_pairs
from helpers.seeding import SampleGenerators, hash_seed
from helpers.tiling import (OVERLAP, count_windows, cut_windows, pad_to, window_boxes,
                            window_weight)

# The sampling settings a checkpoint's config holds (defaults in ddpm_conditional.launch()).
SAMPLE_KEYS = ("sampler", "sample_steps", "eta", "guidance", "clip_x0", "ensemble", "sample_batch",
               "coupled", "flips")

# The test-time self-ensemble (settings['flips']): the image is derained as it is and mirrored
# (left-right; then also upside down, and both), each result is mirrored back, and their mean is
# the output. Each entry is the axes of (3, H, W) to mirror (each its own inverse); the first 1,
# 2 or 4 are used. No transposes or quarter turns: rain falls down, a turned image's streaks lie
# across, where no training window had them (the mean of all 8 forms scored 3.5 / 6.9 dB below
# the mean of 2 on Rain100L / Rain100H; STUDY.md, nineteenth session).
FLIPS = ((), (-1,), (-2,), (-2, -1))
FLIP_COUNTS = (1, 2, 4)


def image_seed(seed, index):
    """Seed of image `index`'s generator: a function of (seed, index) alone, so an image's
    noise does not depend on the images derained before it."""
    return hash_seed("derain", int(seed), int(index))


# ===================================================================== one image
def sample_settings(cfg, **overrides):
    """The sampling settings of a config (a checkpoint's or launch()'s), with flags that are not
    None overriding them."""
    missing = [k for k in SAMPLE_KEYS if k not in cfg and overrides.get(k) is None]
    if missing:
        raise KeyError(f"config lacks the sampling setting(s) {missing}")
    s = {k: cfg[k] for k in SAMPLE_KEYS if k in cfg}
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


def window_seed_base(seed):
    """The base of an image's window seeds: host arithmetic on the image's seed alone."""
    return hash_seed("windows", int(seed))


class Derainer:
    """A trained network with everything deraining needs: the representation (encode the rainy
    windows, decode the generated targets), the diffusion and the sampling settings.

    Everything from window extraction to blending runs on `device` in float32 (the network in
    its own dtype): the image is copied there once, and only the finished image comes back."""

    def __init__(self, model, representation, diffusion, settings, device="cpu", name=""):
        self.device = torch.device(device)
        self.model, self.diffusion = model, diffusion
        self.rep = representation.to(self.device)  # its normalisation, on the device once
        self.settings, self.name = dict(settings), name
        self._weight = None

    def describe(self):
        s = self.settings
        return (f"{self.name}: {self.rep.name}, {sampler_text(self.diffusion.name, s)}, "
                f"guidance {s['guidance']}, clip_x0 {s['clip_x0']}, ensemble {s['ensemble']}")

    def window_weight(self):
        """window_weight(crop) on the device, float32 (made once)."""
        if self._weight is None:
            self._weight = torch.from_numpy(window_weight(self.rep.crop)).float().to(self.device)
        return self._weight

    def derain(self, rain, seed=0, progress=None):
        """Derain one image: float (3, H, W) in [0, 1] -> float32 numpy (3, H, W), not clipped
        (derain_on_device, then the one copy back to the host)."""
        return self.derain_on_device(rain, seed, progress).cpu().numpy()

    @torch.no_grad()
    def derain_on_device(self, rain, seed=0, progress=None):
        """Derain one image: float (3, H, W) in [0, 1] -> float32 (3, H, W) on the device, not
        clipped; the image is copied there once.

        Windows are derained in batches of settings['sample_batch']; settings['ensemble']
        samples per window are averaged in image space (the mean derained image). With
        settings['coupled'], all windows of the image are sampled together and at every step
        their x0 estimates are blended in image space and re-encoded, so that neighbouring
        windows agree (on their low frequencies above all) before the next step. Window k's
        noise (its initial state and every step's) comes from its own generator seeded by
        (the image's seed, k), so the result does not depend on how windows are batched."""
        s, crop = self.settings, self.rep.crop
        _, h0, w0 = rain.shape
        padded = pad_to(np.asarray(rain, np.float32), crop)  # on the host: numpy's reflection
        image = torch.from_numpy(np.ascontiguousarray(padded)).to(self.device)  # (3, H, W)
        flips = s["flips"]
        if flips not in FLIP_COUNTS:
            raise ValueError(f"flips must be one of {FLIP_COUNTS}, got {flips}")
        base = window_seed_base(seed)
        was_training = self.model.training
        self.model.eval()
        try:
            out = None
            for j, dims in enumerate(FLIPS[:flips]):
                # form 0 keeps the seeds it had before flips existed; the others draw their own
                mirror = (lambda x: x.flip(dims)) if dims else (lambda x: x)
                one = mirror(self._derain_padded(mirror(image), base if j == 0 else
                                                 hash_seed("flip", base, j), progress))
                out = one if out is None else out.add_(one)
            if flips > 1:
                out /= flips
        finally:
            self.model.train(was_training)
        return out[:, :h0, :w0]

    def _derain_padded(self, image, base, progress):
        """Derain a padded image (3, H, W) on the device whose windows' seeds start at base."""
        s = self.settings
        boxes = window_boxes(image.shape[1], image.shape[2], self.rep.crop, OVERLAP)
        if s.get("coupled"):
            out = torch.zeros_like(image)
            for k in range(s["ensemble"]):
                out += self._coupled(image, boxes, base + k * len(boxes), progress)
            return out.div_(s["ensemble"])
        return self._independent(image, boxes, base, progress)

    def _sample(self, model, windows, seeds, hook=None):
        """Sample the generated targets of a stack of rainy windows (B, 3, crop, crop) on the
        device; window i draws from the generator of seeds[i]."""
        s, rep = self.settings, self.rep
        dtype = next(self.model.parameters()).dtype
        _, cond = rep.encode(None, windows)  # (B, C, h', w')
        start = rep.encode(windows, windows)[0].to(dtype) \
            if getattr(self.diffusion, "needs_start", False) else None
        noise = SampleGenerators([hash_seed("window", k) for k in seeds], self.device)
        return sample(model, cond.to(dtype), self.diffusion, s["sampler"], s["sample_steps"],
                      s["eta"], s["guidance"], noise, s["clip_x0"] or None, start=start,
                      hook=hook)

    def _blend(self, boxes, derained, out):
        """Add windows (B, 3, crop, crop), weighted, into out (3, H, W)."""
        crop, weight = self.rep.crop, self.window_weight()
        for (y, x), d in zip(boxes, derained):
            out[:, y:y + crop, x:x + crop] += d * weight

    def _norm(self, boxes, image):
        """The sum of the window weights at every pixel (H, W)."""
        crop, weight = self.rep.crop, self.window_weight()
        norm = torch.zeros_like(image[0])
        for y, x in boxes:
            norm[y:y + crop, x:x + crop] += weight
        return norm

    def _windows(self, image, boxes):
        return cut_windows(image, boxes, self.rep.crop)

    def _independent(self, image, boxes, base, progress):
        s = self.settings
        jobs = [box for box in boxes for _ in range(s["ensemble"])]
        out = torch.zeros_like(image)
        for i in range(0, len(jobs), s["sample_batch"]):
            chunk = jobs[i:i + s["sample_batch"]]
            windows = self._windows(image, chunk)  # (B, 3, c, c)
            gen = self._sample(self.model, windows, [(base, i + k) for k in range(len(chunk))])
            self._blend(chunk, self.rep.decode(gen.float(), windows), out)
            if progress is not None:
                progress.update(len(chunk))
        out /= self._norm(jobs, image)  # in place: no second copy of a large image
        return out

    def _coupled(self, image, boxes, base, progress):
        rep = self.rep
        windows = self._windows(image, boxes)
        norm = self._norm(boxes, image)
        blended = {}

        def blend(x0, t):  # x0 estimates of all windows -> one image -> its windows, re-encoded
            img = torch.zeros_like(image)
            self._blend(boxes, rep.decode(x0.float(), windows), img)
            img /= norm
            blended["image"] = img
            return rep.encode(self._windows(img, boxes), windows)[0].to(x0.dtype)

        self._sample(_Chunked(self.model, self.settings["sample_batch"]), windows,
                     [(base, k) for k in range(len(boxes))], hook=blend)
        if progress is not None:
            progress.update(len(boxes))
        return blended["image"]

    def __call__(self, rain_u8, seed=0, progress=None):
        """uint8 (H, W, 3) -> derained uint8 (H, W, 3); the noise comes from `seed` alone."""
        pred = self.derain(rain_u8.transpose(2, 0, 1) / 255.0, seed, progress)
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
        return summarize(self.rows, baseline=True, n_failed=len(self.failed) + len(self.unscored))


def score_item(item, rain_u8, pred_u8):
    """Score one output and its rainy input against the item's target -> row; raises
    InputError (ImageError included) with a message naming the file when it cannot be scored."""
    if item.target is None:
        raise InputError(item.target_error or f"{item.path}: no target (not from a pairs CSV, "
                         "no --eval DIR): not scored")
    target_u8 = read_rgb(item.target)
    if target_u8.shape != pred_u8.shape:
        raise InputError(f"{item.path} is {pred_u8.shape[1]}x{pred_u8.shape[0]} but its target "
                         f"{item.target} is {target_u8.shape[1]}x{target_u8.shape[0]}: not scored")
    ours, base = score_pair(pred_u8, target_u8), score_pair(rain_u8, target_u8)
    return {"name": item.name, "pred": f"{item.name}.png", "target": str(item.target), **ours,
            "input": str(item.path), **{BASELINE_PREFIX + k: v for k, v in base.items()}}


def derain_items(derainer, items, out_dir=None, score=False, seed=0, progress=True, say=print,
                 keep=0):
    """Derain every item with derainer (item i's noise from image_seed(seed, i)), write
    OUT/<name>.png when out_dir is given, score each against its target when `score`, keep the
    first `keep` (rain, ours, clean) triples. A file that cannot be read or written, and an
    image too large for the memory, is reported with say() and skipped; anything else is a bug
    and raises. Returns a Report."""
    report, t0 = Report(), time.time()
    out_dir = Path(out_dir) if out_dir else None
    bar = tqdm(total=len(items), desc="derain", unit="img", disable=not progress,
               dynamic_ncols=True)

    def failed(it, msg):
        say(f"error: {msg if str(it.path) in msg else f'{it.path}: {msg}'}")
        report.failed.append(str(it.path))
        bar.update(1)

    try:
        for index, it in enumerate(items):
            bar.set_postfix_str(it.name, refresh=False)
            try:
                pic = read_picture(it.path)  # any ordinary mode; written back in its own form
            except (ImageError, OSError) as e:
                failed(it, str(e) or type(e).__name__)
                continue
            try:
                w, h = pic.size
                s = derainer.settings
                n_win = count_windows(h, w, derainer.rep.crop,
                                      s["ensemble"] * s["flips"])
                inner = tqdm(total=n_win, desc=f"  {it.name}", unit="win", leave=False,
                             disable=not progress or n_win <= s["sample_batch"],
                             dynamic_ncols=True)
                try:
                    pred = derainer.derain(pic.rgb.transpose(2, 0, 1), image_seed(seed, index),
                                           progress=inner)
                finally:
                    inner.close()
            except torch.cuda.OutOfMemoryError as e:
                failed(it, f"out of GPU memory ({str(e).splitlines()[0]}); try a smaller "
                           "--batch-size")
                continue
            except MemoryError:
                failed(it, "out of memory: the image is too large for this machine")
                continue
            if out_dir is not None:
                try:
                    write_picture(out_dir / f"{it.name}.png", pic.restore(pred.transpose(1, 2, 0)))
                except OSError as e:  # a full disk, a folder that cannot be written
                    failed(it, f"cannot write {out_dir / (it.name + '.png')} ({e})")
                    continue
            pred_u8, rain_u8 = to_uint8(pred), pic.rgb_u8()
            del pred
            report.n_done += 1
            if score:
                try:
                    report.rows.append(score_item(it, rain_u8, pred_u8))
                    if len(report.shown) < keep:
                        report.shown.append((rain_u8, pred_u8, read_rgb(it.target)))
                except (InputError, OSError) as e:
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
