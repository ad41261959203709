"""Draw the training and sampling pipeline as a diagram (training_pipeline.png).

    python -m tools.draw_pipeline [--out training_pipeline.png]

The diagram is built from the code, not typed in by hand: the choices in each box come from the
representation registry (representations: names, TARGETS, NORMS, STD_SPAN, COND_CLIP),
helpers.process.FFT_NORM, diffusion.PREDICTIONS, losses.LOSSES, helpers.tiling.OVERLAP and the defaults
of ddpm_conditional.launch() (marked with a filled dot), and the thumbnails are computed with the
real representation on a synthetic rainy crop of scikit-image's astronaut photo. Changing a
default in launch() changes the figure.
"""
import argparse
import json
import sys
from pathlib import Path

import numpy as np

if __package__ in (None, ""):  # allow `python tools/draw_pipeline.py` as well as `-m`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from helpers import process as P  # noqa: E402
from helpers.figures import plt, save_figure  # noqa: E402  (figures selects the Agg backend)

DEFAULT_KEYS = ("representation", "signed_log", "norm", "target", "prediction", "loss", "crop",
                "sampler", "sample_steps", "eta", "timesteps", "schedule", "model", "freq_coords",
                "clip_x0", "network", "process", "bridge_noise", "bridge_end", "bridge_param",
                "bridge_states", "fft_loss_weight", "fft_loss_scales")
ON, OFF = "\u25cf", "\u25cb"  # filled dot: the launch() default; open dot: the alternatives


# ============================================================================ labels from code
def pipeline_defaults():
    """The launch() defaults the diagram shows (looked up at call time, so a changed default or
    a monkeypatched launch() shows up in the labels)."""
    import ddpm_conditional
    cfg = ddpm_conditional.launch()
    return {k: cfg[k] for k in DEFAULT_KEYS}


def _choices(options, chosen, describe):
    """Two lines per option: '(dot) name' and its description, indented."""
    lines = []
    for o in options:
        lines += [f"{ON if o == chosen else OFF} {o}", f"     {describe(o)}"]
    return lines


def _rep_text(rep):
    import representations
    return representations.get_class(rep).summary


def _norm_text(norm, span):
    # the same reading of the name as representations.base.Representation._ranges
    if norm == "scalar_std":
        return f"one scale, mean \u00b1 {span:g} std"
    if norm == "partial_std":
        return f"per frequency, mean \u00b1 {span:g} std^\u03b3"
    where = "per frequency" if norm.startswith("perfreq") else "per channel"
    how = f"mean \u00b1 {span:g} std" if norm.endswith("_std") else "min/max"
    return f"{where}, {how}"


def _target_text(target):
    return {"diff": "clean \u2212 rain", "clean": "clean"}.get(target, target)


def _bridge_draws(end):
    """How training draws t on the bridge (--bridge-end)."""
    if not end:
        return "t: uniform on 0 \u2026 T\u22121"
    return f"t: {end:.0%} at T\u22121, the rest uniform"


def pipeline_labels(defaults=None):
    """Every text of the diagram, as {name: str or list of lines}, from the code's constants and
    the launch() defaults (or `defaults`, a dict of the same keys)."""
    import diffusion
    import modules
    import representations
    from representations import base
    from helpers.tiling import OVERLAP
    from sampling import steps_text
    d = pipeline_defaults() if defaults is None else dict(defaults)
    rep, norm, target = d["representation"], d["norm"], d["target"]
    crop = d["crop"]
    lab = {"defaults": d}
    lab["title"] = ("Conditional diffusion deraining in the Fourier domain: training (top) and "
                    "sampling (bottom)")
    lab["subtitle"] = (f"{ON} = default of ddpm_conditional.launch(): "
                       f"process={d['process']}, "
                       f"network={d['network']}, representation={rep}, "
                       f"norm={norm}, target={target}, loss={d['loss']}, crop={crop}, "
                       f"sample_steps={d['sample_steps']}")
    lab["images"] = [f"random {crop}\u00d7{crop} crop + flip", "RGB in [0, 1]"]
    lab["fft"] = ["per RGB channel", f"fft2(norm='{P.FFT_NORM}')", "+ fftshift (DC at centre)"]
    lab["channels"] = (["3 complex \u2192 6 real:"]
                       + _choices(representations.names(statistics_only=True), rep, _rep_text))
    slog = ["sign(x)\u00b7log(1 + |x|)" if d["signed_log"] else "linear (no log)"]
    if rep == "magphase":
        slog.append("(phase: not logged)")
    lab["slog"] = slog
    lab["norm"] = (["\u2192 [\u22121, 1] from training statistics"]
                   + _choices(base.NORMS, norm, lambda n: _norm_text(n, base.STD_SPAN)))
    lab["target_condition"] = (
        ["target (generated) = spectrum of"]
        + [f"   {ON if t == target else OFF} {t}: {_target_text(t)}" for t in base.TARGETS]
        + ["condition = spectrum of rain", f"   (clipped to \u00b1{base.COND_CLIP:g})"])
    process, network = d["process"], d["network"]
    if process == "bridge":
        if d["bridge_states"] == "own":  # below the rainy end: the sampler's own states
            lab["noisy"] = ["x_t = (1 \u2212 s) x\u0302\u2080 + s start,  s = (t+1)/T",
                            "x\u0302\u2080: the network's own estimate",
                            "from the rain (no gradient)",
                            "start = zero change (the rain)", _bridge_draws(d["bridge_end"])]
        else:
            lab["noisy"] = ["x_t = (1 \u2212 s) target + s start", f"+ {d['bridge_noise']:g}"
                            "\u00b7\u221a(s(1\u2212s)) \u03b5,  s = (t+1)/T",
                            "start = zero change (the rain)", _bridge_draws(d["bridge_end"])]
    elif process == "regression":
        lab["noisy"] = ["no process: the network", "sees the rainy input (t = 0)"]
    else:
        lab["noisy"] = ["x_t = q_sample(target, t, \u03b5)",
                        f"{d['schedule']} schedule, T = {d['timesteps']}"]
    coords = "\u2295 (fy, fx, r) freq. coords" if d["freq_coords"] else ""
    predicts = ("predicts F: x0 = x_t \u2212 s start + s F" if process == "bridge"
                and d["bridge_param"] == "skip" else
                "predicts x0" if process != "diffusion" else
                "predicts " + "  ".join(f"{ON if p == d['prediction'] else OFF} {p}"
                                        for p in diffusion.PREDICTIONS))
    space, trunk, branch = modules.NETWORKS[network]
    trunk_name = {"unet": "UNet_conditional", "naf": "NAFNet-style trunk"}[trunk]
    blocks = {"none": "", "res_fft": ", Res-FFT branch", "ffc": ", FFC blocks",
              "res_conv": ", 1x1 branch (no FFT)",
              "global_filter": ", global filter (a weight per frequency)"}[branch]
    if space == "pixels":
        lab["unet"] = [f"pixel trunk: {trunk_name} ({d['model']}{blocks})",
                       "x_t, condition \u2192 pixels (inverse FFT):",
                       "the change and the rainy window in,", "its change out \u2192 FFT again",
                       "+ timestep t embedding; " + predicts]
    else:
        lab["unet"] = [f"{trunk_name} ({d['model']}{blocks})",
                       "in: x_t \u2295 condition " + coords, "+ timestep t embedding", predicts]
    fft_term = (f" + {d['fft_loss_weight']:g} \u00d7 FFT-L1 at {d['fft_loss_scales']} scales"
                if d["loss"] == "image_fft" else "")
    lab["loss"] = (f"training: MSE to the {d['prediction']}-target" if d["loss"] == "model" else
                   "training: image-space MSE of the decoded x0" + fft_term
                   if d["loss"] in ("image", "image_fft") else
                   "training: \u2212PSNR of each window's decoded x0" if d["loss"] == "psnr" else
                   f"training: MSE to the {d['prediction']}-target + image-space MSE")
    clip = f"x0 estimate clipped \u00b1{d['clip_x0']:g}" if d["clip_x0"] else ""
    if process == "diffusion":
        lab["sampler_title"] = "DDPM / DDIM sampler"
        lab["sampler"] = ["  ".join(f"{ON if s == d['sampler'] else OFF} {s.upper()}"
                                    for s in diffusion.SAMPLERS),
                          f"{steps_text(d['sample_steps'])}, eta {d['eta']:g}",
                          "x_T ~ N(0, I) \u2192 \u2026 \u2192 x_0", clip]
    else:
        lab["sampler_title"] = "bridge sampler" if process == "bridge" else "one pass"
        if process != "bridge":
            lab["sampler"] = ["x_0 = network(start)", clip]
        elif int(d["sample_steps"]) == 1:
            lab["sampler"] = ["1 step: the x0 estimate at", "x_T = start (the rainy input)",
                              "(--sample-steps N: N deterministic steps)", clip]
        else:
            lab["sampler"] = [f"{steps_text(d['sample_steps'])}, deterministic",
                              "x_T = start (the rainy input)", "\u2192 \u2026 \u2192 x_0", clip]
    lab["windows_in"] = (f"sampling: the rainy photo is cut into {crop}\u00d7{crop} windows "
                         f"({OVERLAP:.0%} overlap);\nthe condition is each window's rain "
                         "spectrum, made as above")
    lab["generated"] = ["x_0 from the sampler", f"(normalised {target} target)"]
    lab["denorm"] = ["inverse of the", "[\u22121, 1] map (same stats", "as training, in ckpt)"]
    lab["islog"] = (["sign(y)\u00b7(e^|y| \u2212 1)"] if d["signed_log"]
                    else ["(linear: nothing", "to invert)"])
    if target == "diff":
        lab["addrain"] = (["|F| = |R| + \u0394|F|", "\u2220F = \u2220R + \u0394\u03c6"]
                          if rep == "magphase" else ["F = FFT(rain) + \u0394F"])
        lab["addrain_title"] = "+ FFT(rain)"
    else:
        lab["addrain"] = ["target is FFT(clean):", "nothing to add"]
        lab["addrain_title"] = "(no rain added)"
    lab["ifft"] = ["ifftshift, ifft2", f"(norm='{P.FFT_NORM}'),", "real part"]
    lab["blend"] = [f"{crop}\u00d7{crop}, {OVERLAP:.0%} overlap,", "raised-cosine weight"]
    return lab


# ============================================================================ example thumbnails
def example_arrays(crop, representation, target, signed_log, seed=3):
    """Thumbnails computed with the real transforms: a rainy crop of skimage's astronaut (made
    with helpers.synth_rain.add_rain) and the spectra of its central crop x crop window."""
    from skimage import data

    import representations
    from helpers.synth_rain import add_rain
    from helpers.tiling import window_starts, window_weight
    photo = data.astronaut()  # (512, 512, 3) uint8
    rainy = add_rain(photo, np.random.default_rng(seed), density=0.004, length=34, angle=12,
                     width=2.2, brightness=0.95, haze=0.0, layers=1)
    size = 2 * crop
    yc, xc = 110, 225  # centred on the face
    y0 = int(np.clip(yc - size // 2, 0, photo.shape[0] - size))
    x0 = int(np.clip(xc - size // 2, 0, photo.shape[1] - size))
    clean_u8 = photo[y0:y0 + size, x0:x0 + size]
    rain_u8 = rainy[y0:y0 + size, x0:x0 + size]
    c = (size - crop) // 2
    win = lambda a: a[c:c + crop, c:c + crop].transpose(2, 0, 1).astype(np.float64) / 255.0
    clean, rain = win(clean_u8), win(rain_u8)
    mag = lambda im: np.log1p(np.abs(P.fft_image(im))).mean(0)  # log(1 + |F|), RGB mean
    rep = representations.make(representation, crop, signed_log, target=target)
    parts = rep.parts(clean, rain)  # unnormalised: the thumbnails show the raw channels
    rain_ch, cond, tgt = parts["rain"], parts["rain"], parts[target]
    back = rep.from_target(tgt, rain)
    starts = window_starts(size, crop)
    return {"clean": clean_u8, "rain": rain_u8, "window": (c, crop),
            "clean_mag": mag(clean), "rain_mag": mag(rain),
            "rain_a": rain_ch[0], "rain_b": rain_ch[3],  # red channel, both halves
            "target_a": tgt[0], "cond_a": cond[0],
            "decoded": np.clip(back.transpose(1, 2, 0), 0, 1),
            "decode_err": float(np.abs(back - clean).max()),
            "tiles": [(y, x) for y in starts for x in starts], "weight": window_weight(crop)}


# ============================================================================ drawing
COLORS = {"data": "#dcebf8", "spec": "#e3f1de", "model": "#fbe3cf", "sample": "#efe2f5",
          "edge": "#3d4f63"}


class _Canvas:
    """One axes in units of about 10 px (140 x 84 units), with boxes, arrows and thumbnails."""

    W, H = 140.0, 86.0

    def __init__(self):
        self.fig = plt.figure(figsize=(12.7, 12.7 * self.H / self.W))
        self.ax = self.fig.add_axes([0, 0, 1, 1])
        self.ax.set_xlim(0, self.W)
        self.ax.set_ylim(0, self.H)
        self.ax.axis("off")

    def box(self, x, y, w, h, title, lines=(), color="data", fs=8.6, title_fs=10,
            align="center"):
        from matplotlib.patches import FancyBboxPatch
        self.ax.add_patch(FancyBboxPatch((x, y), w, h, boxstyle="round,pad=0,rounding_size=1.2",
                                         fc=COLORS[color], ec=COLORS["edge"], lw=1.1))
        self.ax.text(x + w / 2, y + h - 1.0, title, ha="center", va="top", fontsize=title_fs,
                     weight="bold", color="#1b2838")
        body = [s for s in lines if s]
        if body:
            tx = x + w / 2 if align == "center" else x + 1.0
            self.ax.text(tx, y + h - 3.6, "\n".join(body), ha=align, va="top", fontsize=fs,
                         linespacing=1.3, color="#1b2838")
        return (x, y, w, h)

    def thumb(self, img, x, y, size, cmap=None, caption=None, symmetric=False, vmin=None,
              vmax=None):
        ax = self.ax.inset_axes([x, y, size, size], transform=self.ax.transData)
        if symmetric:
            lim = float(np.percentile(np.abs(img), 99.5)) or 1.0
            vmin, vmax = -lim, lim
        ax.imshow(img, cmap=cmap, vmin=vmin, vmax=vmax, interpolation="nearest")
        ax.set_xticks([])
        ax.set_yticks([])
        for s in ax.spines.values():
            s.set_color("#667")
            s.set_linewidth(0.6)
        if caption:
            self.ax.text(x + size / 2, y - 0.4, caption, ha="center", va="top", fontsize=7.4,
                         color="#333")
        return ax

    def arrow(self, start, end, color="#2f3e4e", lw=1.5, style="-|>", rad=0.0, label=None,
              label_xy=None, label_kw=None):
        self.ax.annotate("", xy=end, xytext=start,
                         arrowprops=dict(arrowstyle=style, color=color, lw=lw, shrinkA=0,
                                         shrinkB=0, mutation_scale=13,
                                         connectionstyle=f"arc3,rad={rad}"))
        if label:
            kw = dict(ha="center", va="bottom", fontsize=8, color=color, style="italic")
            kw.update(label_kw or {})
            self.ax.text(*(label_xy or ((start[0] + end[0]) / 2, (start[1] + end[1]) / 2)),
                         label, **kw)


def _right(b, f=0.5):
    return (b[0] + b[2], b[1] + f * b[3])


def _left(b, f=0.5):
    return (b[0], b[1] + f * b[3])


def _top(b, f=0.5):
    return (b[0] + f * b[2], b[1] + b[3])


def _bottom(b, f=0.5):
    return (b[0] + f * b[2], b[1])


def draw_pipeline(out="training_pipeline.png", labels=None, example=True):
    """Draw the diagram and write it atomically to `out`; returns the path."""
    from matplotlib.patches import Rectangle
    lab = labels or pipeline_labels()
    d = lab["defaults"]
    rep, target, crop = d["representation"], d["target"], int(d["crop"])
    ex = example_arrays(crop, rep, target, d["signed_log"]) if example else None
    cv = _Canvas()
    ax = cv.ax
    ax.text(cv.W / 2, cv.H - 0.6, lab["title"], ha="center", va="top", fontsize=13,
            weight="bold")
    ax.text(cv.W / 2, cv.H - 3.4, lab["subtitle"], ha="center", va="top", fontsize=8.8,
            color="#333")

    # ---------------------------------------------------------------- row A: data -> spectra
    yA, hA, gap = 52.0, 26.0, 2.5
    widths = (18.0, 18.5, 20.5, 18.0, 24.0, 25.5)
    xA = [1.0]
    for w_ in widths[:-1]:
        xA.append(xA[-1] + w_ + gap)
    t = 7.4  # thumbnail size
    b_img = cv.box(xA[0], yA, widths[0], hA, "clean & rainy images", lab["images"],
                   title_fs=9.4)
    b_fft = cv.box(xA[1], yA, widths[1], hA, "FFT", lab["fft"], color="spec")
    b_ch = cv.box(xA[2], yA, widths[2], hA, "6 channels", lab["channels"], color="spec",
                  align="left")
    b_log = cv.box(xA[3], yA, widths[3], hA, "signed log", lab["slog"], color="spec")
    b_norm = cv.box(xA[4], yA, widths[4], hA, "normalise", lab["norm"], color="spec",
                    align="left")
    b_tc = cv.box(xA[5], yA, widths[5], hA, "target & condition", lab["target_condition"],
                  color="spec", align="left", fs=8.2)
    for a, b in ((b_img, b_fft), (b_fft, b_ch), (b_ch, b_log), (b_log, b_norm), (b_norm, b_tc)):
        cv.arrow(_right(a), _left(b))
    if ex is not None:
        ty = yA + 3.0
        cv.thumb(ex["clean"], xA[0] + 1.2, ty, t, caption="clean")
        ax_r = cv.thumb(ex["rain"], xA[0] + widths[0] - 1.2 - t, ty, t, caption="rainy")
        c, w = ex["window"]
        ax_r.add_patch(Rectangle((c - 0.5, c - 0.5), w, w, fill=False, ec="yellow", lw=1.0))
        ax.text(xA[0] + widths[0] / 2, ty + t + 0.8,
                f"example: add_rain on\nskimage's astronaut;\nyellow: a {crop}\u00d7{crop} "
                "window", ha="center", va="bottom", fontsize=7.0, color="#444",
                linespacing=1.2)
        both = np.concatenate([ex["clean_mag"].ravel(), ex["rain_mag"].ravel()])
        vmin, vmax = float(both.min()), float(np.percentile(both, 99.5))
        x0 = xA[1] + (widths[1] - 2 * t - 1.2) / 2
        cv.thumb(ex["clean_mag"], x0, ty, t, cmap="magma", vmin=vmin, vmax=vmax,
                 caption="log|F| clean")
        cv.thumb(ex["rain_mag"], x0 + t + 1.2, ty, t, cmap="magma", vmin=vmin, vmax=vmax,
                 caption="log|F| rain")
        if rep == "magphase":
            kw_a = dict(cmap="magma", vmax=float(np.percentile(ex["rain_a"], 99.5)))
            kw_b = dict(cmap="twilight", vmin=-np.pi, vmax=np.pi)
        else:
            kw_a = kw_b = dict(cmap="RdBu_r", symmetric=True)
        names = {"magphase": ("|F| (R)", "phase (R)"), "realimag": ("Re (R)", "Im (R)")}
        na, nb = names.get(rep, ("a", "b"))
        x0 = xA[3] + (widths[3] - 2 * t - 1.0) / 2
        cv.thumb(ex["rain_a"], x0, ty, t, caption=na, **kw_a)
        cv.thumb(ex["rain_b"], x0 + t + 1.0, ty, t, caption=nb, **kw_b)
        values = "after the log:" if d["signed_log"] else "linear values:"
        ax.text(b_log[0] + b_log[2] / 2, ty + t + 0.8, f"rain window,\n{values}",
                ha="center", va="bottom", fontsize=7.4, color="#333")
        x0 = xA[5] + (widths[5] - 2 * t - 2.0) / 2
        cv.thumb(ex["target_a"], x0, ty, t, cmap="RdBu_r", symmetric=True,
                 caption=f"target {na}")
        cv.thumb(ex["cond_a"], x0 + t + 2.0, ty, t, cmap="RdBu_r", symmetric=True,
                 caption=f"condition {na}")

    # ---------------------------------------------------------------- row B: model
    yB, hB = 26.5, 17.5
    b_noisy = cv.box(112, yB + 1.5, 27, hB - 3,
                     "noisy target" if lab["defaults"]["process"] == "diffusion"
                     else "network input", lab["noisy"], color="model")
    b_unet = cv.box(59, yB, 42, hB, "conditional network", lab["unet"], color="model")
    b_samp = cv.box(11, yB, 33, hB, lab["sampler_title"], lab["sampler"], color="model")
    cv.arrow(_bottom(b_tc, 0.8), (b_tc[0] + 0.8 * b_tc[2], b_noisy[1] + b_noisy[3]),
             label="target", label_xy=(b_tc[0] + 0.8 * b_tc[2] + 0.8, (yA + yB + hB) / 2),
             label_kw=dict(ha="left", va="center"))
    cv.arrow(_bottom(b_tc, 0.15), _top(b_unet, 0.85), label="condition",
             label_xy=(108.0, (yA + yB + hB) / 2 - 1.0), label_kw=dict(ha="left", va="center"))
    cv.arrow(_left(b_noisy), _right(b_unet), label="x_t, t",
             label_xy=((b_noisy[0] + b_unet[0] + b_unet[2]) / 2, yB + hB / 2 + 0.4))
    ax.text(b_unet[0] + b_unet[2] / 2, yB - 0.6, lab["loss"], ha="center", va="top",
            fontsize=8.2, style="italic", color="#7a3b00")
    mid = (b_samp[0] + b_samp[2] + b_unet[0]) / 2
    cv.arrow((b_samp[0] + b_samp[2], yB + hB * 0.62), (b_unet[0], yB + hB * 0.62),
             label="x_t, t", label_xy=(mid, yB + hB * 0.64))
    cv.arrow((b_unet[0], yB + hB * 0.32), (b_samp[0] + b_samp[2], yB + hB * 0.32),
             label="prediction", label_xy=(mid, yB + hB * 0.34))
    ax.text(b_samp[0], yB + hB + 1.0, lab["windows_in"], ha="left", va="bottom", fontsize=8.2,
            style="italic", color="#4a2a6a", linespacing=1.25)

    # ---------------------------------------------------------------- row C: sampling
    yC, hC = 1.0, 19.5
    w, gap = 17.6, 2.45
    xs = [1 + i * (w + gap) for i in range(7)]
    box = lambda i, title, lines, **kw: cv.box(xs[i], yC, w, hC, title, lines, color="sample",
                                               fs=8.2, **kw)
    b_gen = box(0, "generated target", lab["generated"])
    b_den = box(1, "denormalise", lab["denorm"])
    b_il = box(2, "inverse signed log", lab["islog"], title_fs=9.4)
    b_add = box(3, lab["addrain_title"], lab["addrain"])
    b_ifft = box(4, "inverse FFT", lab["ifft"])
    b_bl = box(5, "windows blended", lab["blend"], title_fs=9.4)
    b_out = box(6, "derained image", [])
    chain = (b_gen, b_den, b_il, b_add, b_ifft, b_bl, b_out)
    for a, b in zip(chain, chain[1:]):
        cv.arrow(_right(a), _left(b))
    cv.arrow(_bottom(b_samp, 0.2), _top(b_gen, 0.5), label="x_0",
             label_xy=(b_gen[0] + w / 2 + 1.5, (yB + yC + hC) / 2), label_kw=dict(ha="left"))
    if ex is not None:
        ty = yC + 1.4
        size = 8.6
        ax_t = cv.thumb(ex["rain"], b_bl[0] + 0.6, ty, size)
        for (y, x) in ex["tiles"]:
            ax_t.add_patch(Rectangle((x - 0.5, y - 0.5), crop, crop, fill=False, ec="yellow",
                                     lw=0.7, alpha=0.9))
        cv.thumb(ex["weight"], b_bl[0] + w - 0.6 - 6.6, ty + 1.0, 6.6, cmap="gray", vmin=0,
                 vmax=1)
        ax.text(b_bl[0] + 0.6 + size / 2, ty + size + 0.3, "windows", ha="center", va="bottom",
                fontsize=7.2, color="#333")
        ax.text(b_bl[0] + w - 0.6 - 3.3, ty + size + 0.3, "weight", ha="center", va="bottom",
                fontsize=7.2, color="#333")
        cv.thumb(ex["decoded"], b_out[0] + (w - 9.5) / 2, yC + 6.3, 9.5)
        ax.text(b_out[0] + w / 2, yC + 0.6,
                "example window decoded\nfrom its true target\n(max error "
                + ("< 1e-12)" if ex["decode_err"] < 1e-12 else f"{ex['decode_err']:.0e})"),
                ha="center", va="bottom", fontsize=6.9, color="#333")
    save_figure(cv.fig, out, text=labels_text(lab))  # atomic; closes the figure
    return Path(out)


def labels_text(labels):
    """The diagram's texts as JSON: stored in the PNG (its Description), so a test can tell a
    diagram that is out of date with the code without comparing rendered pixels."""
    return json.dumps(labels, sort_keys=True)


def labels_of(png):
    """The texts a diagram was drawn with (from its PNG), or None."""
    from PIL import Image
    with Image.open(png) as im:
        text = im.text.get("Description")
    return json.loads(text) if text else None


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="training_pipeline.png", help="PNG to write")
    args = ap.parse_args(argv)
    path = draw_pipeline(args.out)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
