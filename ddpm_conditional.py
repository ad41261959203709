"""Train the conditional diffusion model that removes rain in the Fourier domain.

    python ddpm_conditional.py                          # embedded synthetic set, ~10 min on a CPU
    python ddpm_conditional.py --preset rain100l        # Rain100L pairs 1-50, validate on 51-60
    python ddpm_conditional.py --lr 1e-4 --model large --minutes 60 --run-dir runs/big
    python ddpm_conditional.py --config my.yaml --dry-run   # print the resolved config and exit
    python ddpm_conditional.py --run-dir runs/x --resume    # continue from runs/x's last checkpoint
    torchrun --standalone --nproc_per_node=4 ddpm_conditional.py --preset rain100l   # DDP

Every default is in launch(); a preset, then a --config file (JSON or YAML), then --key value
flags override it. The model learns to generate the normalised spectrum of clean - rain given the
spectrum of the rainy image (the representation, representations/); at the end the held-out
pairs are derained at full size (sampling.py) and scored with PSNR-Y / SSIM-Y beside the rainy
input. The pieces: data (prepare_data, utils.get_data), the levers built from the config
(build_parts: representation, diffusion, network, loss), one optimiser step (TrainStep), the
learning-rate plan (LRPlan), the loop (Trainer), the final evaluation.
"""
import argparse
import contextlib
import copy
import hashlib
import json
import math
import os
import random
import signal
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

import representations
from checkpoint import (CheckpointError, ckpt_paths, ema_weights, load_checkpoint,
                        save_checkpoint)
from diffusion import PROCESSES, make_process
from helpers.devices import DeviceError, resolve_device
from helpers.seeding import hash_seed
from losses import make_loss
from modules import MODEL_PRESETS, NETWORKS, build_network
from utils import get_data

REPO = Path(__file__).resolve().parent


def launch():
    """Every default, once. Edit here, or override with a preset, --config FILE or --key value."""
    return dict(
        # ---- data
        preset="synthetic",      # synthetic (embedded, no download) | rain100l | rain100h |
                                 # rain100 (both) | custom
        data_root="../shared/data",  # real sets for the presets, relative to this repository
        csv="",                  # training pairs CSV (preprocess_csv.py); set by the preset
        val_csv="",              # held-out pairs CSV for validation and the final evaluation
        stats="",                # statistics JSON (get_fft_statistics_log.py); made if missing
        representation="realimag",  # realimag | magphase | rfft2 | blockdct | pixels: what the
                                 # model's channels hold (representations/; pixels: the same
                                 # UNet on pixels, the reference)
        signed_log=False,        # sign(x) log1p(|x|) on the spectrum (false: linear values;
                                 # the variant study found linear + image loss better)
        block=8,                 # blockdct: the block size (coefficients as channels)
        target="diff",           # diff: generate FFT(clean) - FFT(rain) | clean: FFT(clean)
        norm="perfreq_std",      # perfreq_std | perfreq | global_std | global: per frequency or
                                 # per channel, mean -+ 2 std (_std) or min/max -> [-1, 1];
                                 # scalar_std: one scale | partial_std: std_f ^ norm_gamma
        norm_gamma=0.5,          # partial_std's exponent (1: perfreq_std, 0: scalar_std)
        crop=64,                 # training window; derain.py tiles images with this window
        num_workers=2,           # data-loader processes
        # ---- model (a preset of modules.MODEL_PRESETS, plus overrides of its arguments)
        model="small",           # small | default | large
        model_args={},           # e.g. {"base_channels": 96}: overrides of the preset
        network="pixel_trunk",   # pixel_trunk: decode the spectral state to pixels, U-Net, encode
                                 # back (needs x0 output) | unet: 3x3 U-Net over the
                                 # representation's channels | ffc: with a global Fourier
                                 # branch per block; modules.py, README's variant study
        freq_coords=True,        # the representation's constant inputs (frequency coordinates)
        # ---- process and loss
        process="bridge",        # bridge: from the rainy input to the clean target |
                                 # diffusion: from pure noise | regression: one pass, no
                                 # process (diffusion.py)
        bridge_noise=0.1,        # the bridge's noise scale
        bridge_end=0.9,          # bridge: fraction of training draws at the rainy end (t = T-1,
                                 # the task the first sampling step solves); the rest uniform
                                 # (35 min, 2 seeds, README: 0.5 gave +1.9 / +2.0 dB over 0,
                                 # 0.9 another +0.5 / +0.2)
        freq_schedule=0.0,       # diffusion: noise low frequencies last (0: one schedule; s in
                                 # (0, 1): coefficient at radius r follows abar ** (1 - s (1 - r)))
        timesteps=1000,          # training noise levels
        schedule="cosine",       # cosine | linear
        prediction="x0",         # eps | x0 | v: what a diffusion's network outputs (the bridge
                                 # and regression predict x0)
        loss="image",            # image: MSE of the decoded x0 estimate in image space (what
                                 # PSNR measures) | model: MSE of the prediction | mix
        loss_mix=0.5,            # weight of the image part of loss=mix
        p_uncond=0.0,            # condition dropout in training (>0 enables guidance)
        # ---- optimisation
        batch_size=16,           # per process and micro-batch
        grad_accum=1,            # micro-batches per optimiser step
        lr=1e-3,                 # peak learning rate (AdamW)
        weight_decay=0.0,        # AdamW weight decay
        warmup_steps=200,        # linear warm-up, then cosine decay to lr_min_ratio * lr
        lr_min_ratio=0.05,       # final learning rate as a fraction of lr
        max_steps=0,             # optimiser steps (0: no limit, use minutes)
        minutes=10.0,            # wall-clock budget for training (0: no limit, use max_steps)
        grad_clip=1.0,           # clip the global gradient norm
        ema_decay=0.999,         # EMA of the weights (warmed up as (1+n)/(10+n))
        amp="bf16",              # CUDA autocast: bf16 | fp16 (with a GradScaler) | none
        channels_last=True,      # NHWC memory format (faster on CUDA and on x86 CPUs)
        compile=False,           # torch.compile the model
        seed=0,                  # everything random derives from it
        device="auto",           # auto | cpu | cuda | cuda:N
        threads=0,               # CPU threads for torch (0: leave torch's default)
        # ---- sampling (validation, final evaluation, and derain.py's defaults)
        sampler="ddim",          # ddim | ddpm
        sample_steps=1,          # network evaluations per sample: for PSNR the first step's x0
                                 # estimate (the posterior mean) wins; more steps move towards a
                                 # sample of the posterior (README, "Sampling steps")
        eta=0.0,                 # DDIM eta (0: deterministic)
        guidance=1.0,            # classifier-free guidance scale (1: none)
        clip_x0=5.0,             # bound the x0 estimate while sampling (0: off)
        ensemble=1,              # samples averaged per window
        sample_batch=32,         # windows per forward pass when deraining
        coupled=False,           # sample all windows of an image together, blending their x0
                                 # estimates in image space at every step
        # ---- logging and checkpoints
        run_dir="",              # outputs; default runs/<preset>-<fft|pixel>
        log_every=25,            # steps between log lines
        ckpt_every=500,          # steps between checkpoints
        keep_ckpts=3,            # checkpoints kept (oldest deleted)
        eval_points=4,           # validations (figure and PSNR-Y) at 1/n, 2/n, ... of the run
                                 # (of its budget or max_steps; the last at the end); 0: none
        eval_every=0,            # also every this many steps (0: never)
        eval_images=4,           # held-out pairs used at each validation
        final_eval=True,         # derain all held-out pairs at the end and score them
        max_bad_steps=10,        # NaN/inf losses in a row before the run stops
        resume="",               # "" none | "auto"/"latest" (the run dir's last) | a path
    )


# Presets fill in the data; their files are made on first use (see prepare_data).
PRESETS = {
    "synthetic": dict(),
    "rain100l": dict(crop=64, minutes=60.0, ckpt_every=1000),
    "rain100h": dict(crop=64, minutes=60.0, ckpt_every=1000),
    "rain100": dict(crop=64, minutes=60.0, ckpt_every=1000),
    "custom": dict(),
}
# (shared sets, last training number): numbers 1-50 train, 51-60 validate. Rain100L and Rain100H
# share their backgrounds by number, so one split by number serves both.
PRESET_SPLITS = {"rain100l": (("Rain100L",), 50), "rain100h": (("Rain100H",), 50),
                 "rain100": (("Rain100L", "Rain100H"), 50)}
# Keys whose value must be one of a list (checked when the config is resolved).
CHOICES = {"representation": representations.names(), "target": representations.TARGETS,
           "norm": representations.NORMS, "schedule": ("cosine", "linear"),
           "prediction": ("eps", "x0", "v"), "loss": ("model", "image", "mix"),
           "network": NETWORKS, "process": PROCESSES, "preset": tuple(PRESETS),
           "model": tuple(MODEL_PRESETS),
           "sampler": ("ddim", "ddpm"), "amp": ("bf16", "fp16", "none")}
EXIT_STOPPED, EXIT_NON_FINITE, EXIT_OUT_OF_SYNC = 3, 4, 5


# ===================================================================== configuration
def _parse_value(text, default):
    if isinstance(default, bool):
        if text.lower() in ("1", "true", "yes", "on"):
            return True
        if text.lower() in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"expected true/false, got {text!r}")
    if isinstance(default, int):
        return int(text)
    if isinstance(default, float):
        return float(text)
    if isinstance(default, (dict, list)):
        return json.loads(text)
    return text


def load_config_file(path):
    with open(path, encoding="utf-8") as f:
        if str(path).endswith((".yaml", ".yml")):
            import yaml
            data = yaml.safe_load(f) or {}
        else:
            data = json.load(f)
    if not isinstance(data, dict):
        raise ValueError(f"{path}: a config file holds a mapping of keys to values")
    return data


def launch_comments():
    """{key: its comment in launch()} (continuation lines joined): the --help text, written
    once beside the default it explains."""
    import inspect
    import re
    comments, key = {}, None
    for line in inspect.getsource(launch).splitlines():
        m = re.match(r"\s*(\w+)=.*?#\s?(.*)$", line)
        if m:
            key = m.group(1)
            comments[key] = m.group(2).strip()
        elif key and re.match(r"\s*#\s?(.*)$", line) and not line.strip().startswith("# ----"):
            comments[key] += " " + re.match(r"\s*#\s?(.*)$", line).group(1).strip()
        else:
            key = None
    return comments


def resolve_config(argv=None):
    """launch() < preset < --config file < --key value. Returns (config, dry_run)."""
    cfg = launch()
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n")[0], allow_abbrev=False,
        epilog="Every flag is a key of launch() (its comment above, its default in brackets); a "
               "preset, then --config, then the flags override the defaults. Presets: "
               + ", ".join(f"{k} ({', '.join(f'{a}={b}' for a, b in v.items()) or 'launch()'})"
                           for k, v in PRESETS.items()))
    ap.add_argument("--config", help="JSON or YAML file of overrides")
    ap.add_argument("--dry-run", action="store_true",
                    help="print the resolved config (with the data paths a preset will use) and "
                         "exit")
    comments = launch_comments()
    for key, value in cfg.items():
        flag = "--" + key.replace("_", "-")
        text = f"{comments.get(key, '')} [{json.dumps(value)}]".replace("%", "%%")
        if key == "resume":
            ap.add_argument(flag, nargs="?", const="auto", default=None, help=text)
        else:
            kind = "BOOL" if isinstance(value, bool) else "JSON" if isinstance(value, (dict, list)) \
                else type(value).__name__.upper()
            ap.add_argument(flag, dest=key, default=None, help=text, choices=CHOICES.get(key),
                            metavar=None if key in CHOICES else kind)
    args = ap.parse_args(argv)
    file_cfg = load_config_file(args.config) if args.config else {}
    given = {k: v for k, v in vars(args).items() if k in cfg and v is not None}
    preset = given.get("preset", file_cfg.get("preset", cfg["preset"]))
    if preset not in PRESETS:
        ap.error(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    cfg.update(PRESETS[preset])
    unknown = sorted(set(file_cfg) - set(cfg))
    if unknown:
        ap.error(f"{args.config}: unknown key(s) {unknown}; see launch() for the keys")
    cfg.update(file_cfg)
    for key, text in given.items():
        try:
            cfg[key] = _parse_value(text, launch()[key]) if isinstance(text, str) else text
        except ValueError as e:
            ap.error(f"--{key.replace('_', '-')}: {e}")
    for key, allowed in CHOICES.items():
        if cfg[key] not in allowed:
            ap.error(f"--{key.replace('_', '-')} {cfg[key]!r}: choose one of {', '.join(allowed)}")
    if cfg["network"] == "pixel_trunk" and cfg["process"] == "diffusion" and \
            cfg["prediction"] != "x0":
        ap.error("--network pixel_trunk outputs an x0 estimate: use --prediction x0 (or "
                 "--process bridge / regression)")
    if cfg["csv"] and preset == "synthetic" and "preset" not in given \
            and "preset" not in file_cfg:
        cfg["preset"] = "custom"
    if not cfg["run_dir"]:
        domain = representations.get_class(cfg["representation"]).domain
        cfg["run_dir"] = str(Path("runs") / f"{cfg['preset']}-{domain}")
    return cfg, args.dry_run


# ===================================================================== data preparation
def _rel(path):
    """A path relative to the repository when it lies inside it (keeps configs portable)."""
    try:
        return str(Path(path).resolve().relative_to(REPO))
    except ValueError:
        return str(path)


def stats_path(cfg):
    """Where the statistics of cfg's training CSV and representation settings live."""
    stem = Path(cfg["csv"]).with_suffix("")
    linear = "" if cfg["signed_log"] else "_linear"
    opts = "".join(f"_{k}{cfg[k]}" for k in representations.get_class(cfg["representation"])
                   .options)
    return f"{stem}_stats_{cfg['representation']}{linear}{opts}_{cfg['crop']}.json"


def planned_paths(cfg):
    """cfg with the CSV and statistics paths its preset will use (made by prepare_data)."""
    cfg = dict(cfg)
    if not cfg["csv"] and (cfg["preset"] == "synthetic" or cfg["preset"] in PRESET_SPLITS):
        out = REPO / "data" / "presets" / cfg["preset"]
        cfg["csv"], cfg["val_csv"] = str(out / "train.csv"), str(out / "val.csv")
    if cfg["csv"] and not cfg["stats"] and \
            representations.get_class(cfg["representation"]).needs_statistics:
        cfg["stats"] = stats_path(cfg)
    for key in ("csv", "val_csv", "stats"):
        if cfg[key]:
            cfg[key] = _rel(cfg[key])
    return cfg


def prepare_data(cfg, log=print):
    """Make what the preset needs (pairs CSVs, statistics) if missing; fill cfg's paths."""
    preset = cfg["preset"]
    if preset == "synthetic" and not cfg["csv"]:
        from helpers.synth_rain import build_default
        from preprocess_csv import find_pairs, write_pairs_csv
        root = REPO / "data" / "synthetic"
        info = build_default(root)
        out = REPO / "data" / "presets" / "synthetic"
        for split in ("train", "val"):
            csv = out / f"{split}.csv"
            if info["built"] or not csv.exists():  # a rebuilt set gets fresh CSVs (and stats)
                write_pairs_csv(find_pairs(Path(info[split])), csv)
                if info["built"]:
                    for old in out.glob(f"{split}_stats_*"):
                        old.unlink()
        cfg["csv"], cfg["val_csv"] = str(out / "train.csv"), str(out / "val.csv")
    elif preset in PRESET_SPLITS and not cfg["csv"]:
        from preprocess_csv import background_number, find_pairs, write_pairs_csv
        names, n_train = PRESET_SPLITS[preset]
        out = REPO / "data" / "presets" / preset
        # One validation CSV per set as well when the preset mixes sets (val_Rain100L.csv, ...),
        # so that each set is scored on its own.
        wanted = [out / "train.csv", out / "val.csv"] + \
            ([out / f"val_{name}.csv" for name in names] if len(names) > 1 else [])
        if not all(f.exists() for f in wanted):
            train, val = [], {}
            for name in names:
                src = (REPO / cfg["data_root"] / name).resolve()
                if not src.is_dir():
                    raise SystemExit(f"error: {src} not found: the {preset} preset reads the "
                                     f"shared data in place (set --data-root to the folder "
                                     f"holding {name}/)")
                pairs = find_pairs(src)
                train += [p for p in pairs if background_number(p.clean_id) <= n_train]
                val[name] = [p for p in pairs if background_number(p.clean_id) > n_train]
            write_pairs_csv(train, out / "train.csv", absolute=True)
            write_pairs_csv([p for name in names for p in val[name]], out / "val.csv",
                            absolute=True)
            if len(names) > 1:
                for name in names:
                    write_pairs_csv(val[name], out / f"val_{name}.csv", absolute=True)
        cfg["csv"], cfg["val_csv"] = str(out / "train.csv"), str(out / "val.csv")
    if not cfg["csv"]:
        raise SystemExit("error: no training CSV: give --csv PAIRS.csv (see preprocess_csv.py) "
                         "or a --preset")
    needs_stats = representations.get_class(cfg["representation"]).needs_statistics
    if needs_stats and not cfg["stats"]:
        cfg["stats"] = stats_path(cfg)
    if needs_stats and not Path(cfg["stats"]).exists():
        from helpers.statistics import compute_statistics, save_statistics
        log(f"computing statistics of {cfg['csv']} -> {cfg['stats']}")
        cls = representations.get_class(cfg["representation"])
        stats, freq, errors = compute_statistics(cfg["csv"], cfg["representation"], cfg["crop"],
                                                 cfg["signed_log"],
                                                 workers=max(1, cfg["num_workers"]),
                                                 options={k: cfg[k] for k in cls.options})
        for e in errors:
            log(f"skipped: {e}")
        save_statistics(stats, freq, cfg["stats"])
    for key in ("csv", "val_csv", "stats"):
        if cfg[key]:
            cfg[key] = _rel(cfg[key])
    return cfg


def make_representation(cfg):
    """The representation of a resolved config, with its statistics when it needs them."""
    stats = None
    if representations.get_class(cfg["representation"]).needs_statistics:
        from helpers.statistics import load_statistics
        stats = load_statistics(cfg["stats"])
    return representations.from_config(cfg, stats)


# ===================================================================== processes and devices
class Distributed:
    """This process's place in a torchrun job (or a single process): rank, world, device, and
    the few collectives the loop needs. The device comes from helpers.devices.resolve_device
    (indexed: cuda:LOCAL_RANK); a device that cannot be used raises DeviceError."""

    def __init__(self, device="auto"):
        self.ddp = int(os.environ.get("WORLD_SIZE", "1")) > 1
        self.device = resolve_device(device, ddp=self.ddp)
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
        if self.ddp and not dist.is_initialized():
            dist.init_process_group("nccl" if self.device.type == "cuda" else "gloo")
        self.rank = dist.get_rank() if self.ddp else 0
        self.world = dist.get_world_size() if self.ddp else 1
        self.master = self.rank == 0

    def any(self, flag):
        """True on every rank if it is true on any (ranks must leave the loop together)."""
        if not self.ddp:
            return bool(flag)
        t = torch.tensor([float(flag)], device=self.device)
        dist.all_reduce(t)
        return t.item() > 0

    def any_on_device(self, flag):
        """A device bool, true on every rank where it is true on any: a collective on the
        device, with no host read (the training step agrees on skipping an update this way)."""
        if not self.ddp:
            return flag
        t = flag.float()
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return t > 0

    def from_master(self, value):
        """Rank 0's float on every rank: decisions that depend on a clock are taken once."""
        if not self.ddp:
            return value
        t = torch.tensor([float(value)], dtype=torch.float64, device=self.device)
        dist.broadcast(t, src=0)
        return t.item()

    def broadcast_object(self, obj):
        if not self.ddp:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def gather_object(self, obj):
        if not self.ddp:
            return [obj]
        out = [None] * self.world
        dist.all_gather_object(out, obj)
        return out

    def close(self):
        if self.ddp and dist.is_initialized():
            dist.destroy_process_group()


# ===================================================================== the levers, built
class EMA:
    """Exponential moving average of a model's weights, kept on the model's device with no
    host reads (as EDM's training loop does): update n (n = 0, 1, ...) copies the weights when
    n = 0 and otherwise moves the average by (1 - d) of the way to them, with the warm-up
    d = min(decay, (1 + n) / (10 + n)), computed from n on the host. `keep` (a device 0-d
    float, 1 or 0) masks an update the training step skipped. state_dict() has the layout of
    torch.optim.swa_utils.AveragedModel ("module." + name, and n_averaged), which checkpoints
    written before this class also hold."""

    def __init__(self, model, decay):
        self.module = copy.deepcopy(model)
        for p in self.module.parameters():
            p.requires_grad_(False)
        self.decay, self.n = float(decay), 0

    @torch.no_grad()
    def update(self, model, keep=None):
        avg, new = list(self.module.parameters()), [p.detach() for p in model.parameters()]
        if self.n == 0:
            torch._foreach_copy_(avg, new)
        else:
            d = min(self.decay, (1 + self.n) / (10 + self.n))
            step = torch._foreach_sub(new, avg)  # avg + (p - avg) (1 - d), term by term
            torch._foreach_mul_(step, 1 - d)
            if keep is not None:
                torch._foreach_mul_(step, keep)
            torch._foreach_add_(avg, step)
        self.n += 1

    def state_dict(self):
        return {**{f"module.{k}": v for k, v in self.module.state_dict().items()},
                "n_averaged": torch.tensor(self.n)}

    def load_state_dict(self, state):
        self.module.load_state_dict(ema_weights(state))
        self.n = int(state["n_averaged"])  # a checkpoint's tensors are on the CPU


class Parts:
    """Everything a config builds: representation, diffusion, network (and its DDP/compiled
    form for training), EMA, loss, optimiser and scaler, all on env.device."""

    def __init__(self, cfg, env, representation=None):
        rep = representation if representation is not None else make_representation(cfg)
        self.rep = rep.to(env.device)  # the normalisation statistics, on the device once
        self.diffusion = make_process(cfg, self.rep)
        fmt = torch.channels_last if cfg["channels_last"] else torch.preserve_format
        self.model = build_network(cfg, self.rep).to(env.device, memory_format=fmt)
        self.ema = EMA(self.model, cfg["ema_decay"])
        self.net = self.model
        if env.ddp:  # no buffers to broadcast: GroupNorm keeps no running statistics and the
            # representation's are constants
            self.net = torch.nn.parallel.DistributedDataParallel(
                self.model, device_ids=[env.device.index] if env.device.type == "cuda" else None,
                broadcast_buffers=False)
        if cfg["compile"]:
            self.net = torch.compile(self.net)
        self.loss = make_loss(cfg, self.diffusion, self.rep)
        # fused: one kernel for all tensors, and it takes `found_inf`, which skips a step with
        # a non-finite gradient on the device (TrainStep) instead of a host check every step
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=cfg["lr"],
                                     weight_decay=cfg["weight_decay"], betas=(0.9, 0.99),
                                     fused=True)
        amp = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(cfg["amp"])
        self.amp_dtype = amp if env.device.type == "cuda" else None
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp_dtype is torch.float16)

    def load_optimizer(self, state):
        """The optimiser state of a checkpoint (its tensors move to the parameters' device);
        the step stays fused whatever the checkpoint's optimiser was."""
        self.opt.load_state_dict(state)
        for group in self.opt.param_groups:
            group.update(fused=True, foreach=None)


class LRPlan:
    """Linear warm-up, then cosine decay to lr_min_ratio * lr at the end of the run.

    The end is max_steps, or under a time budget (`minutes`) the end of the budget: then
    progress is the fraction of the budget used (the larger of the two when both are set) and
    the decay follows the clock, so a run ends with its learning rate decayed however fast the
    machine turns out to be. The caller passes rank 0's clock to every rank. Either way warm-up
    lasts warmup_steps or WARMUP_BUDGET of the run, whichever ends first: a run shorter than
    its warm-up still decays (a 199-step run used to end at its peak rate)."""

    WARMUP_BUDGET = 0.05

    def __init__(self, lr, warmup_steps, lr_min_ratio, max_steps=0, minutes=0.0):
        self.lr, self.warmup_steps, self.lo = lr, max(1, int(warmup_steps)), lr_min_ratio
        self.max_steps, self.budget_s = int(max_steps), 60.0 * float(minutes)

    def progress(self, step, elapsed_s):
        """Fraction of the run done, in [0, 1] (0 when the run has no end)."""
        p = step / self.max_steps if self.max_steps else 0.0
        if self.budget_s:
            p = max(p, elapsed_s / self.budget_s)
        return min(1.0, p)

    def factor(self, step, elapsed_s=0.0):
        if self.budget_s:
            p = self.progress(step, elapsed_s)
            warm_p = min(self.WARMUP_BUDGET, self._warm_fraction())
            if step < self.warmup_steps and p < warm_p:
                return max((step + 1) / self.warmup_steps, p / warm_p)
            return self._decay((p - warm_p) / max(1e-9, 1 - warm_p))
        warm = self.warmup_steps
        if self.max_steps:
            warm = max(1, min(warm, math.ceil(self.WARMUP_BUDGET * self.max_steps)))
        if step < warm:
            return (step + 1) / warm
        if not self.max_steps:
            return 1.0
        return self._decay((step - warm) / max(1, self.max_steps - warm))

    def _warm_fraction(self):
        return self.warmup_steps / self.max_steps if self.max_steps else 1.0

    def _decay(self, progress):
        progress = min(1.0, max(0.0, progress))
        return self.lo + (1 - self.lo) * 0.5 * (1 + math.cos(math.pi * progress))

    def apply(self, opt, step, elapsed_s=0.0):
        lr = self.lr * self.factor(step, elapsed_s)
        for group in opt.param_groups:
            group["lr"] = lr
        return lr


class TrainStep:
    """One optimiser step of training: grad_accum micro-batches through the loss, gradient
    clipping, AdamW, EMA. bench.py times exactly this.

    Nothing is read back to the host: the loss and the gradient norm stay device tensors (the
    Trainer reads them at log points), and a step whose loss or gradient is not finite is
    skipped on the device (the fused AdamW's found_inf, the EMA's mask), agreed on by all ranks
    through a device collective."""

    def __init__(self, cfg, parts, env):
        self.parts, self.env = parts, env
        self.grad_accum, self.grad_clip = int(cfg["grad_accum"]), float(cfg["grad_clip"])
        self.channels_last = bool(cfg["channels_last"])

    def _to_device(self, batch):
        out = {}
        for k, v in batch.items():
            if k == "position":  # host integers: the per-sample seeds are made from them
                out[k] = v
                continue
            v = v.to(self.env.device, non_blocking=True)
            if self.channels_last and v.dim() == 4:
                v = v.contiguous(memory_format=torch.channels_last)
            out[k] = v
        return out

    def __call__(self, stream):
        """-> (loss, gradient norm, skipped, images): the loss (the mean over the step's
        samples), the gradient norm before clipping and whether the update was skipped are
        device tensors; images is the number of samples over all ranks."""
        p, env = self.parts, self.env
        p.net.train()
        total, n_imgs = 0.0, 0
        for micro in range(self.grad_accum):
            batch = self._to_device(next(stream))
            sync = micro == self.grad_accum - 1 or not env.ddp
            ctx = p.net.no_sync() if (env.ddp and not sync) else contextlib.nullcontext()
            with ctx, torch.autocast(env.device.type, dtype=p.amp_dtype,
                                     enabled=p.amp_dtype is not None):
                loss = p.loss(p.net, batch).mean() / self.grad_accum
            p.scaler.scale(loss).backward()
            total = total + loss.detach().float()
            n_imgs += batch["target"].shape[0] * env.world
        p.scaler.unscale_(p.opt)
        gnorm = torch.nn.utils.clip_grad_norm_(p.model.parameters(), self.grad_clip)
        # every rank agrees to skip, else the weights would diverge
        skipped = env.any_on_device(~(torch.isfinite(total) & torch.isfinite(gnorm)))
        p.opt.found_inf = skipped.float()  # fused AdamW leaves weights and moments as they were
        try:
            p.opt.step()
        finally:
            del p.opt.found_inf
        p.scaler.update()
        p.opt.zero_grad(set_to_none=True)
        p.ema.update(p.model, keep=(~skipped).float())
        return total, gnorm, skipped, n_imgs


class StepStats:
    """What the steps between two log points did, accumulated on the device and read once, at
    the log point (the training loop's only host read between log points)."""

    def __init__(self, device):
        self.device = device
        self.reset()
        self.run = torch.zeros((), device=device)  # skipped steps in a row, across log points

    def reset(self):
        self.loss = self.gnorm = self.good = self.skipped = torch.zeros((), device=self.device)

    def add(self, loss, gnorm, skipped):
        good = (~skipped).float()
        # where(): a skipped step's NaN must not poison the sums
        self.loss = self.loss + torch.where(skipped, 0.0, loss)
        self.gnorm = self.gnorm + torch.where(skipped, 0.0, gnorm.float())
        self.good, self.skipped = self.good + good, self.skipped + (1 - good)
        self.run = (self.run + 1) * (1 - good)

    def read(self):
        """-> (mean loss, mean gradient norm) of the good steps (None if there were none),
        skipped steps, skipped steps in a row up to now; then starts a new interval."""
        loss, gnorm, good, skipped, run = torch.stack(
            [self.loss, self.gnorm, self.good, self.skipped, self.run]).tolist()
        self.reset()
        if not good:
            return None, None, int(skipped), int(run)
        return loss / good, gnorm / good, int(skipped), int(run)


# ===================================================================== logs and RNG state
class RunLog:
    """log.jsonl and TensorBoard scalars, written by rank 0 only."""

    def __init__(self, run_dir, enabled, say):
        self.jsonl = open(Path(run_dir) / "log.jsonl", "a", encoding="utf-8") if enabled else None
        self.writer = None
        if enabled:
            try:
                from torch.utils.tensorboard import SummaryWriter
                self.writer = SummaryWriter(str(Path(run_dir) / "tb"))
            except ImportError:
                say("tensorboard not installed: logging to log.jsonl only")

    def write(self, rec):
        if self.jsonl is None:
            return
        self.jsonl.write(json.dumps(rec) + "\n")
        self.jsonl.flush()
        if self.writer:
            for k, v in rec.items():
                if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool):
                    self.writer.add_scalar(k, v, rec["step"])

    def close(self):
        for f in (self.jsonl, self.writer):
            if f is not None:
                f.close()


def rng_state():
    np_state = np.random.get_state()
    return {"torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)),
                      *[int(v) if isinstance(v, (int, np.integer)) else float(v)
                        for v in np_state[2:]]],
            "python": [random.getstate()[0], list(random.getstate()[1]), random.getstate()[2]]}


def set_rng_state(s):
    torch.set_rng_state(s["torch"])
    if s["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(s["cuda"])
    n = s["numpy"]
    np.random.set_state((n[0], n[1].numpy().astype(np.uint32), *n[2:]))
    random.setstate((s["python"][0], tuple(s["python"][1]), s["python"][2]))


def weights_digest(model):
    """SHA-256 of all parameters and buffers, in order."""
    h = hashlib.sha256()
    for v in model.state_dict().values():
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def find_resume(cfg, run_dir):
    """The checkpoint path cfg['resume'] names (None: start from scratch)."""
    r = cfg["resume"]
    if r in ("auto", "latest"):
        found = ckpt_paths(run_dir)
        return found[-1] if found else None
    return Path(r) if r else None


# ===================================================================== the loop
class RunClock:
    """Training seconds of the run, the same on every rank (the learning-rate plan and the
    budget read it). One process reads its own clock at every step. Under DDP rank 0's clock is
    broadcast only at check points (every `every` steps) and extrapolated in between at the
    pace measured over the last interval, so every rank computes the same value without a
    collective and a host read at every step."""

    def __init__(self, env, before=0.0, every=25):
        self.env, self.before, self.every = env, float(before), max(1, int(every))
        self.start(0)

    def start(self, step):
        self.t0, self.anchor, self.pace, self.next = time.time(), (step, self.before), 0.0, step

    def local(self):
        """This rank's own clock."""
        return self.before + time.time() - self.t0

    def __call__(self, step):
        if not self.env.ddp:
            return self.local()
        s0, e0 = self.anchor
        if step >= self.next:
            now = self.env.from_master(self.local())
            if step > s0:
                self.pace = (now - e0) / (step - s0)
            self.anchor, self.next = (step, now), step + self.every
            return now
        return e0 + (step - s0) * self.pace


class Trainer:
    """The training loop: steps, stops, logs, checkpoints and validations. It sees the levers
    only through Parts (the network, the loss, the optimiser) and the validate callable.

    Between log points the loop reads nothing back from the device: the step's loss, gradient
    norm and skip flag accumulate there (StepStats) and are read at the log point, where a run
    of max_bad_steps skipped steps stops the run. Under DDP the ranks agree on the clock and on
    a stop request at check points (every log_every steps)."""

    def __init__(self, cfg, env, parts, validate=None, log=None):
        self.cfg, self.env, self.parts, self.validate_fn = cfg, env, parts, validate
        self.say = (log or _above_bar) if env.master else (lambda msg: None)
        self.run_dir = Path(cfg["run_dir"])
        self.stop_file = self.run_dir / "STOP"
        self.step_fn = TrainStep(cfg, parts, env)
        self.plan = LRPlan(cfg["lr"], cfg["warmup_steps"], cfg["lr_min_ratio"],
                           cfg["max_steps"], cfg["minutes"])
        self.step = 0
        self.clock = RunClock(env, 0.0, cfg["log_every"])
        self.stop_signal = False
        path = find_resume(cfg, self.run_dir)
        if cfg["resume"] and path is None:
            self.say(f"no checkpoint in {self.run_dir}: starting from scratch")
        if path is not None:  # to the CPU first: the RNG states must stay there
            self._restore(load_checkpoint(path, map_location="cpu"), path)
        self.log = RunLog(self.run_dir, env.master, self.say)

    def _restore(self, ckpt, path):
        """Weights, EMA, optimiser and scaler onto the device; RNG states stay on the CPU."""
        p = self.parts
        if ckpt["model_config"] != p.model.config or \
                ckpt["config"]["representation"] != self.cfg["representation"]:
            raise CheckpointError(f"{path}: its model ({ckpt['model_config']}, "
                                  f"{ckpt['config']['representation']}) differs from the "
                                  "config's; resume with the run's own config.json")
        p.model.load_state_dict(ckpt["model"])
        p.ema.load_state_dict(ckpt["ema"])
        p.load_optimizer(ckpt["optimizer"])
        p.scaler.load_state_dict(ckpt["scaler"])
        self.step = ckpt["step"]
        self.clock = RunClock(self.env, ckpt.get("elapsed", 0.0), self.cfg["log_every"])
        if ckpt.get("rng") and self.env.world == ckpt.get("world", 1):
            set_rng_state(ckpt["rng"][min(self.env.rank, len(ckpt["rng"]) - 1)])
        self.say(f"resumed from {path} at step {self.step}")

    # ------------------------------------------------------------------ state
    def save(self):
        """Write a checkpoint (rank 0), after checking that every rank holds the same weights."""
        self.check_sync()
        rngs = self.env.gather_object(rng_state())
        elapsed = self.clock(self.step)
        if not self.env.master:
            return
        p = self.parts
        state = {"step": self.step, "model": p.model.state_dict(), "ema": p.ema.state_dict(),
                 "optimizer": p.opt.state_dict(), "scaler": p.scaler.state_dict(),
                 "rng": rngs, "world": self.env.world, "config": copy.deepcopy(self.cfg),
                 "model_config": p.model.config, "representation": p.rep.state(),
                 "elapsed": elapsed}
        path = self.run_dir / f"ckpt_{self.step:08d}.pt"
        save_checkpoint(state, path)
        for old in ckpt_paths(self.run_dir)[:-max(1, self.cfg["keep_ckpts"])]:
            old.unlink()
        self.say(f"saved {path}")

    def check_sync(self):
        """All ranks must hold the same weights; if not, stop with an error (exit 5)."""
        if not self.env.ddp:
            return
        digests = self.env.gather_object(weights_digest(self.parts.model))
        same = len(set(digests)) == 1
        self.log.write({"step": self.step, "ranks_in_sync": same, "weights_digest": digests})
        if not same:
            raise RanksOutOfSync(f"step {self.step}: the ranks hold different weights "
                                 f"({len(set(digests))} digests); the run is stopped. Report it "
                                 "with the run's log.jsonl")

    def _on_signal(self, signum, frame):
        self.stop_signal = True

    def _stop_requested(self):
        """A STOP file or a signal on any rank (under DDP asked at check points only)."""
        if self.env.ddp and self.step % self.clock.every:
            return False
        return self.env.any(self.stop_signal or self.stop_file.exists())

    # ------------------------------------------------------------------ the loop
    def train(self):
        cfg, env = self.cfg, self.env
        for s in (signal.SIGUSR1, signal.SIGTERM):
            try:
                signal.signal(s, self._on_signal)
            except (ValueError, AttributeError):  # not the main thread / no such signal
                pass
        self.clock.start(self.step)
        stream = iter(get_data(cfg, self.parts.rep, train=True,
                               start=self.step * cfg["grad_accum"], seed=cfg["seed"]))
        bar = self._bar()
        points = int(cfg["eval_points"])
        done_points = int(self.plan.progress(self.step, self.clock.before) * points)
        stats = StepStats(env.device)
        t_last, imgs_since, exit_code = time.time(), 0, 0
        try:
            while True:
                elapsed = self.clock(self.step)
                progress = self.plan.progress(self.step, elapsed)
                self._show(bar, progress, elapsed)
                if points and int(progress * points) > done_points and done_points < points:
                    done_points = int(progress * points)
                    self.validate()  # at 1/n, 2/n, ... of the run; n/n is the end
                if cfg["max_steps"] and self.step >= cfg["max_steps"]:
                    break
                if cfg["minutes"] and elapsed >= 60 * cfg["minutes"]:
                    self.say(f"time budget of {cfg['minutes']} min reached at step {self.step}")
                    break
                if self._stop_requested():
                    self.say(f"stop requested at step {self.step}: checkpointing; continue with "
                             "--resume")
                    exit_code = EXIT_STOPPED  # stopped early (pre-emption): no final evaluation
                    break
                lr = self.plan.apply(self.parts.opt, self.step, elapsed)
                loss, gnorm, skipped, n_imgs = self.step_fn(stream)
                stats.add(loss, gnorm, skipped)
                self.step += 1
                imgs_since += n_imgs
                if self.step % cfg["log_every"] == 0 or self.step == 1:
                    if self._log_point(stats, bar, lr, time.time() - t_last, imgs_since):
                        return EXIT_NON_FINITE
                    t_last, imgs_since = time.time(), 0
                if cfg["ckpt_every"] and self.step % cfg["ckpt_every"] == 0:
                    self.save()
                if cfg["eval_every"] and self.step % cfg["eval_every"] == 0:
                    self.validate()
            self.save()
        finally:
            bar.close()
            self.log.close()
        return exit_code

    def _log_point(self, stats, bar, lr, seconds, images):
        """Read the steps since the last log point (one host read), log them; True when the
        skipped steps in a row reached max_bad_steps (the run stops)."""
        loss, gnorm, skipped, run = stats.read()
        if skipped:
            self.say(f"step {self.step}: {skipped} step(s) since the last log line had a "
                     f"non-finite loss or gradient and were skipped ({run} in a row now)")
            self.log.write({"step": self.step, "skipped": skipped, "skipped_in_a_row": run})
        if run >= self.cfg["max_bad_steps"]:
            self.say(f"error: {run} non-finite steps in a row; stopping. The weights are those "
                     f"of the last good step and the last checkpoint is kept in "
                     f"{self.run_dir}; lower --lr or check the statistics.")
            return True
        if loss is not None:
            rec = {"step": self.step, "loss": loss, "lr": lr, "grad_norm": gnorm,
                   "img_per_s": images / max(seconds, 1e-9),
                   "elapsed_s": round(self.clock.local(), 1)}
            bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2g}",
                            img_s=f"{rec['img_per_s']:.1f}", refresh=False)
            self.log.write(rec)
        return False

    def _bar(self):
        """A progress bar of the run: of its budget (minutes and/or max_steps: per mille of the
        run, with the minutes used and tqdm's ETA) or, with no end, of its steps."""
        from tqdm import tqdm
        has_end = bool(self.cfg["max_steps"] or self.cfg["minutes"])
        return tqdm(total=1000 if has_end else None, disable=not self.env.master,
                    dynamic_ncols=True, unit="\u2030" if has_end else "step",
                    bar_format="{desc}{percentage:3.0f}%|{bar}| ETA {remaining}{postfix}"
                    if has_end else None)

    def _show(self, bar, progress, elapsed):
        if bar.total:
            bar.update(int(progress * 1000) - bar.n)
            budget = f"/{self.cfg['minutes']:g}" if self.cfg["minutes"] else ""
            steps = f"/{self.cfg['max_steps']}" if self.cfg["max_steps"] else ""
            bar.set_description_str(f"step {self.step}{steps}, {elapsed / 60:.1f}{budget} min ",
                                    refresh=False)
        else:
            bar.update(self.step - bar.n)

    def validate(self):
        """Derain a few held-out pairs with the EMA model: PSNR-Y in the log and a figure."""
        if not self.env.master or self.validate_fn is None:
            return
        rec = self.validate_fn(self.parts.ema.module, self.step)
        self.log.write({"step": self.step, **rec})
        self.say(f"step {self.step}: validation PSNR-Y {rec['val_psnr_y']:.2f} dB (rainy input "
                 f"{rec['val_input_psnr_y']:.2f} dB) on {rec['val_pairs']} pairs")


class RanksOutOfSync(RuntimeError):
    pass


def _above_bar(msg):
    """Print a message above the progress bar (never through it)."""
    from tqdm import tqdm
    tqdm.write(str(msg))


# ===================================================================== evaluation
def derainer_for(cfg, parts, model, env):
    from sampling import Derainer, sample_settings
    return Derainer(model, parts.rep, parts.diffusion, sample_settings(cfg), env.device,
                    name=Path(cfg["run_dir"]).name)


def make_validator(cfg, parts, env, run_dir):
    """validate(model, step) -> log record: the first eval_images held-out pairs."""
    from helpers.figures import comparison_figure
    from sampling import derain_items, pairs_items
    if not cfg["val_csv"]:
        return None
    items = pairs_items(cfg["val_csv"], limit=cfg["eval_images"])

    def validate(model, step):
        report = derain_items(derainer_for(cfg, parts, model, env), items, score=True,
                              progress=False, keep=4)
        if report.shown:
            comparison_figure(report.shown, Path(run_dir) / f"val_{step:08d}.png", spectra=True)
        s = report.summary
        return {"val_psnr_y": s["psnr_y"], "val_ssim_y": s["ssim_y"],
                "val_input_psnr_y": s["baseline"]["psnr_y"], "val_pairs": s["n"]}
    return validate


def final_evaluation(cfg, parts, env, model, step):
    """Derain every held-out pair at full size with the EMA model, print PSNR-Y/SSIM-Y of the
    rainy input and of the result, and write the comparison figure and the derained images."""
    from helpers.figures import comparison_figure
    from helpers.metrics import write_scores_csv
    from sampling import derain_items, pairs_items, sampler_text
    run_dir = Path(cfg["run_dir"])
    derainer = derainer_for(cfg, parts, model, env)
    report = derain_items(derainer, pairs_items(cfg["val_csv"]), out_dir=run_dir / "derained",
                          score=True, progress=True, keep=4, say=_above_bar)
    if not report.rows:
        print(f"error: none of the pairs of {cfg['val_csv']} could be derained", file=sys.stderr)
        return None
    if report.shown:
        comparison_figure(report.shown, run_dir / "final_comparison.png", spectra=True)
    write_scores_csv(report.rows, run_dir / "derained" / "scores.csv")
    s = report.summary
    summary = {"step": step, "pairs": s["n"], "input_psnr_y": s["baseline"]["psnr_y"],
               "input_ssim_y": s["baseline"]["ssim_y"], "psnr_y": s["psnr_y"],
               "ssim_y": s["ssim_y"], "sampler": cfg["sampler"],
               "sample_steps": cfg["sample_steps"],
               "seconds_per_image": report.seconds_per_image}
    (run_dir / "final_eval.json").write_text(json.dumps(summary, indent=1) + "\n")
    log = RunLog(run_dir, True, print)  # the final numbers beside the training curves too
    log.write({"step": step, "final_psnr_y": s["psnr_y"], "final_ssim_y": s["ssim_y"],
               "final_input_psnr_y": summary["input_psnr_y"],
               "final_input_ssim_y": summary["input_ssim_y"], "final_pairs": s["n"]})
    log.close()
    print(f"\nheld-out pairs ({s['n']}, {cfg['val_csv']}), "
          f"{sampler_text(cfg['process'], cfg)}:")
    print(f"  rainy input : PSNR-Y {summary['input_psnr_y']:6.2f} dB   "
          f"SSIM-Y {summary['input_ssim_y']:.4f}")
    print(f"  derained    : PSNR-Y {s['psnr_y']:6.2f} dB   SSIM-Y {s['ssim_y']:.4f}   "
          f"({s['psnr_y'] - summary['input_psnr_y']:+.2f} dB)")
    print(f"  figure {run_dir / 'final_comparison.png'}, images {run_dir / 'derained'}")
    return summary


# ===================================================================== main
def setup(cfg, env, log=None):
    """Data, seeds, the levers and the loop for a resolved config -> Trainer."""
    if env.master:
        prepare_data(cfg, log or _above_bar)
    cfg.update(env.broadcast_object(cfg))  # the other ranks read rank 0's data paths
    if cfg["threads"]:
        torch.set_num_threads(cfg["threads"])
    torch.manual_seed(hash_seed("init", cfg["seed"], env.rank))  # the model's initial weights
    np.random.seed(hash_seed("numpy", cfg["seed"], env.rank) % 2 ** 32)
    random.seed(hash_seed("python", cfg["seed"], env.rank))
    run_dir = Path(cfg["run_dir"])
    run_dir.mkdir(parents=True, exist_ok=True)
    parts = Parts(cfg, env)
    trainer = Trainer(cfg, env, parts, make_validator(cfg, parts, env, run_dir), log)
    if env.master:
        (run_dir / "config.json").write_text(json.dumps(cfg, indent=1) + "\n")
    n_params = sum(p.numel() for p in parts.model.parameters())
    trainer.say(f"model {cfg['model']}: {n_params / 1e6:.2f}M parameters on {env.device}"
                f" x{env.world}; data {cfg['csv']} ({cfg['representation']}, {cfg['target']}, "
                f"loss {cfg['loss']}, crop {cfg['crop']})")
    return trainer


def run(cfg, env):
    """Train (and evaluate) a resolved config; returns the exit status."""
    try:
        trainer = setup(cfg, env)
    except (ValueError, OSError) as e:  # bad statistics, checkpoint, CSV: say which and why
        print(f"error: {e}", file=sys.stderr)
        return 2
    try:
        code = trainer.train()
    except RanksOutOfSync as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_OUT_OF_SYNC
    if code == 0 and env.master and cfg["final_eval"] and cfg["val_csv"]:
        if final_evaluation(cfg, trainer.parts, env, trainer.parts.ema.module,
                            trainer.step) is None:
            code = 1
    return code


def main(argv=None):
    cfg, dry_run = resolve_config(argv)
    if dry_run:
        print(json.dumps(planned_paths(cfg), indent=1))
        return 0
    try:
        env = Distributed(cfg["device"])
    except DeviceError as e:  # e.g. --device cuda on a machine without a GPU: one line, exit 2
        print(f"error: {e}", file=sys.stderr)
        return 2
    code = 1
    try:
        code = run(cfg, env)
    finally:
        env.close()
        if env.master:  # torchrun reports any failure as 1; train.sh reads the real status here
            from helpers.images import write_text
            write_text(Path(cfg["run_dir"]) / "exit_status", f"{code}\n")
    return code


if __name__ == "__main__":
    sys.exit(main())
