"""Train the conditional diffusion model that removes rain in the Fourier domain.

    python ddpm_conditional.py                          # embedded synthetic set, ~10 min on a CPU
    python ddpm_conditional.py --preset rain100l        # Rain100L pairs 1-50, validate on 51-60
    python ddpm_conditional.py --lr 1e-4 --model large --minutes 60 --run-dir runs/big
    python ddpm_conditional.py --config my.yaml --dry-run   # print the resolved config and exit
    python ddpm_conditional.py --run-dir runs/x --resume    # continue from runs/x's last checkpoint
    torchrun --standalone --nproc_per_node=4 ddpm_conditional.py --preset rain100l   # DDP

Every default is in launch(); a preset, then a --config file (JSON or YAML), then --key value
flags override it. The model learns to generate the normalised spectrum of clean - rain given the
spectrum of the rainy image (see utils.Codec); at the end the held-out pairs are derained at full
size (derain.py) and scored with PSNR-Y / SSIM-Y beside the rainy input.
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
from torch.optim.swa_utils import AveragedModel

from diffusion import Diffusion
from helpers.seeding import hash_seed
from modules import MODEL_PRESETS, UNet_conditional
from utils import Codec, get_data

REPO = Path(__file__).resolve().parent
CKPT_KIND = "fourier-ddpm-derain"
CKPT_VERSION = 1


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
        domain="fft",            # fft: the Fourier model | pixel: the same UNet on pixels
        representation="realimag",  # realimag | magphase: what the 6 spectrum channels hold
        target="diff",           # diff: generate FFT(clean) - FFT(rain) | clean: FFT(clean)
        norm="perfreq_std",      # perfreq_std | perfreq | global_std | global: per frequency or
                                 # per channel; mean -+ 2 std (_std) or min/max -> [-1, 1]
        crop=64,                 # training window; derain.py tiles images with this window
        num_workers=2,           # data-loader processes
        # ---- model (a preset of modules.MODEL_PRESETS, plus overrides of its arguments)
        model="small",           # small | default | large
        model_args={},           # e.g. {"base_channels": 96}: overrides of the preset
        freq_coords=True,        # frequency-coordinate input channels (fft domain only)
        # ---- diffusion
        timesteps=1000,          # training noise levels
        schedule="cosine",       # cosine | linear
        prediction="v",          # eps | x0 | v: what the network outputs
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
        # ---- sampling (validation, final evaluation; derain.py reads its own flags)
        sampler="ddim",          # ddim | ddpm
        sample_steps=2,          # network evaluations per sample: for PSNR the few-step estimate
                                 # (close to the posterior mean) wins; see README
        eta=0.0,                 # DDIM eta (0: deterministic)
        guidance=1.0,            # classifier-free guidance scale (1: none)
        clip_x0=5.0,             # bound the x0 estimate while sampling (0: off)
        # ---- logging and checkpoints
        run_dir="",              # outputs; default runs/<preset>-<domain>
        log_every=25,            # steps between log lines
        ckpt_every=500,          # steps between checkpoints
        keep_ckpts=3,            # checkpoints kept (oldest deleted)
        eval_every=1000,         # steps between validation figures and PSNR-Y (0: never)
        eval_images=4,           # held-out pairs used at each validation
        final_eval=True,         # derain all held-out pairs at the end and score them
        max_bad_steps=10,        # NaN/inf losses in a row before the run stops
        resume="",               # "" none | "auto"/"latest" (the run dir's last) | a path
    )


# Presets fill in the data; their files are made on first use (see prepare_data).
PRESETS = {
    "synthetic": dict(),
    "rain100l": dict(crop=64, minutes=60.0, eval_every=2000, ckpt_every=1000),
    "rain100h": dict(crop=64, minutes=60.0, eval_every=2000, ckpt_every=1000),
    "rain100": dict(crop=64, minutes=60.0, eval_every=2000, ckpt_every=1000),
    "custom": dict(),
}
# (shared sets, last training number): numbers 1-50 train, 51-60 validate. Rain100L and Rain100H
# share their backgrounds by number, so one split by number serves both.
PRESET_SPLITS = {"rain100l": (("Rain100L",), 50), "rain100h": (("Rain100H",), 50),
                 "rain100": (("Rain100L", "Rain100H"), 50)}


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


def resolve_config(argv=None):
    """launch() < preset < --config file < --key value. Returns (config, dry_run)."""
    cfg = launch()
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0], allow_abbrev=False)
    ap.add_argument("--config", help="JSON or YAML file of overrides")
    ap.add_argument("--dry-run", action="store_true", help="print the resolved config and exit")
    for key, value in cfg.items():
        flag = "--" + key.replace("_", "-")
        if key == "resume":
            ap.add_argument(flag, nargs="?", const="auto", default=None,
                            help="resume: the run dir's latest checkpoint, or a path")
        else:
            ap.add_argument(flag, dest=key, default=None, metavar=type(value).__name__.upper())
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
    if cfg["csv"] and preset == "synthetic" and "preset" not in given \
            and "preset" not in file_cfg:
        cfg["preset"] = "custom"
    if not cfg["run_dir"]:
        cfg["run_dir"] = str(Path("runs") / f"{cfg['preset']}-{cfg['domain']}")
    return cfg, args.dry_run


# ===================================================================== data preparation
def _rel(path):
    """A path relative to the repository when it lies inside it (keeps configs portable)."""
    try:
        return str(Path(path).resolve().relative_to(REPO))
    except ValueError:
        return str(path)


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
            if not csv.exists():
                write_pairs_csv(find_pairs(Path(info[split])), csv)
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
    if cfg["domain"] == "fft" and not cfg["stats"]:
        stem = Path(cfg["csv"]).with_suffix("")
        cfg["stats"] = f"{stem}_stats_{cfg['representation']}_{cfg['crop']}.json"
    if cfg["domain"] == "fft" and not Path(cfg["stats"]).exists():
        from helpers.statistics import compute_statistics, save_statistics
        log(f"computing statistics of {cfg['csv']} -> {cfg['stats']}")
        stats, freq, errors = compute_statistics(cfg["csv"], cfg["representation"], cfg["crop"],
                                                 True, workers=max(1, cfg["num_workers"]))
        for e in errors:
            log(f"skipped: {e}")
        save_statistics(stats, freq, cfg["stats"])
    for key in ("csv", "val_csv", "stats"):
        if cfg[key]:
            cfg[key] = _rel(cfg[key])
    return cfg


# ===================================================================== model, checkpoints
def build_model(cfg):
    """The network for a resolved config; its arguments are stored in the checkpoint."""
    if cfg["model"] not in MODEL_PRESETS:
        raise ValueError(f"unknown model {cfg['model']!r}; choose {', '.join(MODEL_PRESETS)}")
    channels = 6 if cfg["domain"] == "fft" else 3
    args = {**MODEL_PRESETS[cfg["model"]], **cfg["model_args"], "in_channels": channels,
            "cond_channels": channels, "out_channels": channels,
            "freq_coords": bool(cfg["freq_coords"]) and cfg["domain"] == "fft"}
    return UNet_conditional(**args)


def ckpt_paths(run_dir):
    return sorted(Path(run_dir).glob("ckpt_*.pt"))


class CheckpointError(ValueError):
    pass


def load_checkpoint(path, map_location="cpu"):
    """Load a checkpoint of this repository safely (weights_only); clear error otherwise."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # torch raises many types for truncated or foreign files
        raise CheckpointError(f"{path}: not a readable checkpoint ({type(e).__name__}: "
                              f"{str(e).splitlines()[0][:200]}); it may be truncated or damaged: "
                              "use an earlier checkpoint of the run") from e
    if not isinstance(ckpt, dict) or ckpt.get("kind") != CKPT_KIND:
        raise CheckpointError(f"{path}: not a checkpoint of this repository (no kind "
                              f"{CKPT_KIND!r}); train one with ddpm_conditional.py")
    return ckpt


def model_from_checkpoint(ckpt, ema=True):
    """(model in eval mode, codec, diffusion, config) from a loaded checkpoint."""
    model = UNet_conditional(**ckpt["model_config"])
    state = ckpt["model"]
    if ema and ckpt.get("ema"):  # AveragedModel's state: "module."-prefixed, plus n_averaged
        state = {k[len("module."):]: v for k, v in ckpt["ema"].items() if k.startswith("module.")}
    model.load_state_dict(state)
    model.eval()
    cfg = ckpt["config"]
    if cfg.get("channels_last", True):  # NHWC: ~1.3x faster sampling on CPU too, same numbers
        model = model.to(memory_format=torch.channels_last)
    return (model, Codec.from_state(ckpt["codec"]),
            Diffusion(cfg["timesteps"], cfg["schedule"], cfg["prediction"]), cfg)


def _atomic_save(obj, path):
    tmp = Path(str(path) + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def _rng_state():
    np_state = np.random.get_state()
    return {"torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)),
                      *[int(v) if isinstance(v, (int, np.integer)) else float(v)
                        for v in np_state[2:]]],
            "python": _py_rng_to_list(random.getstate())}


def _py_rng_to_list(state):
    return [state[0], list(state[1]), state[2]]


def _set_rng_state(s):
    torch.set_rng_state(s["torch"])
    if s["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(s["cuda"])
    n = s["numpy"]
    np.random.set_state((n[0], n[1].numpy().astype(np.uint32), *n[2:]))
    random.setstate((s["python"][0], tuple(s["python"][1]), s["python"][2]))


# ===================================================================== training
class Trainer:
    """One training run: model, EMA, optimiser, schedule, data stream, logs and checkpoints."""

    def __init__(self, cfg):
        self.cfg = cfg
        self.ddp = int(os.environ.get("WORLD_SIZE", "1")) > 1
        if self.ddp and not dist.is_initialized():
            dist.init_process_group("nccl" if torch.cuda.is_available() and
                                    cfg["device"] != "cpu" else "gloo")
        self.rank = dist.get_rank() if self.ddp else 0
        self.world = dist.get_world_size() if self.ddp else 1
        self.master = self.rank == 0
        self.device = self._device()
        if cfg["threads"]:
            torch.set_num_threads(cfg["threads"])
        torch.manual_seed(cfg["seed"] + self.rank)
        np.random.seed((cfg["seed"] + self.rank) % 2 ** 32)
        random.seed(cfg["seed"] + self.rank)
        self.run_dir = Path(cfg["run_dir"])
        self.stop_file = self.run_dir / "STOP"
        self._stop_signal = False

    def _device(self):
        d = self.cfg["device"]
        if d == "auto":
            d = "cuda" if torch.cuda.is_available() else "cpu"
        if d.startswith("cuda") and self.ddp:
            d = f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}"
        if d.startswith("cuda"):
            torch.cuda.set_device(torch.device(d))
        return torch.device(d)

    def log(self, msg):
        if self.master:
            print(msg, flush=True)

    # ------------------------------------------------------------------ setup
    def setup(self):
        cfg = self.cfg
        if self.master:
            prepare_data(cfg, self.log)
        if self.ddp:  # the other ranks wait for rank 0's data preparation, then read the paths
            obj = [cfg]
            dist.broadcast_object_list(obj, src=0)
            cfg.update(obj[0])
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.codec = Codec(cfg["domain"], cfg["representation"], cfg["target"], cfg["norm"],
                           cfg["crop"], self._stats(), True)
        self.diffusion = Diffusion(cfg["timesteps"], cfg["schedule"], cfg["prediction"])
        model = build_model(cfg).to(self.device)
        if cfg["channels_last"]:
            model = model.to(memory_format=torch.channels_last)
        self.model = model
        decay = float(cfg["ema_decay"])

        def ema_fn(avg, p, n):  # EMA with warm-up: early weights are forgotten quickly
            d = min(decay, (1 + float(n)) / (10 + float(n)))
            return avg + (p - avg) * (1 - d)

        self.ema = AveragedModel(model, avg_fn=ema_fn, use_buffers=True)
        self.net = model
        if self.ddp:
            self.net = torch.nn.parallel.DistributedDataParallel(
                model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        if cfg["compile"]:
            self.net = torch.compile(self.net)
        self.opt = torch.optim.AdamW(model.parameters(), lr=cfg["lr"],
                                     weight_decay=cfg["weight_decay"], betas=(0.9, 0.99))
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, self._lr_lambda)
        self.amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(cfg["amp"])
        use_amp = self.device.type == "cuda" and self.amp_dtype is not None
        self.amp_dtype = self.amp_dtype if use_amp else None
        self.scaler = torch.amp.GradScaler("cuda", enabled=use_amp and cfg["amp"] == "fp16")
        self.step = 0
        self.bad_steps = 0
        self._resume()
        if self.master:
            (self.run_dir / "config.json").write_text(json.dumps(cfg, indent=1) + "\n")
        n_params = sum(p.numel() for p in model.parameters())
        self.log(f"model {cfg['model']}: {n_params / 1e6:.2f}M parameters on {self.device}"
                 f" x{self.world}; data {cfg['csv']} ({cfg['domain']}, {cfg['representation']}, "
                 f"{cfg['target']}, crop {cfg['crop']})")

    def _stats(self):
        if self.cfg["domain"] != "fft":
            return None
        from helpers.statistics import load_statistics
        return load_statistics(self.cfg["stats"])

    def _lr_lambda(self, step):
        cfg = self.cfg
        warm = max(1, cfg["warmup_steps"])
        if step < warm:
            return (step + 1) / warm
        total = self._planned_steps()
        if not total:
            return 1.0
        progress = min(1.0, (step - warm) / max(1, total - warm))
        lo = cfg["lr_min_ratio"]
        return lo + (1 - lo) * 0.5 * (1 + math.cos(math.pi * progress))

    def _planned_steps(self):
        """max_steps, or under a time budget an estimate from the measured step time, so the
        cosine decay ends when the budget does."""
        if self.cfg["max_steps"]:
            return self.cfg["max_steps"]
        return getattr(self, "_estimated_total", 0)

    def _resume(self):
        r = self.cfg["resume"]
        if not r:
            return
        if r in ("auto", "latest"):
            found = ckpt_paths(self.run_dir)
            if not found:
                self.log(f"no checkpoint in {self.run_dir}: starting from scratch")
                return
            r = found[-1]
        ckpt = load_checkpoint(r, map_location=self.device)
        if ckpt["model_config"] != self.model.config:
            raise CheckpointError(f"{r}: its model ({ckpt['model_config']}) differs from the "
                                  "config's; resume with the run's own config.json")
        self.model.load_state_dict(ckpt["model"])
        self.ema.load_state_dict(ckpt["ema"])
        self.opt.load_state_dict(ckpt["optimizer"])
        self.sched.load_state_dict(ckpt["scheduler"])
        self.scaler.load_state_dict(ckpt["scaler"])
        self.step = ckpt["step"]
        self._estimated_total = ckpt.get("planned_steps", 0)
        self._elapsed_before = ckpt.get("elapsed", 0.0)
        if ckpt.get("rng") and self.world == ckpt.get("world", 1):
            _set_rng_state(ckpt["rng"][min(self.rank, len(ckpt["rng"]) - 1)]
                           if isinstance(ckpt["rng"], list) else ckpt["rng"])
        self.log(f"resumed from {r} at step {self.step}")

    def save(self):
        """Write a checkpoint atomically (rank 0) and delete the oldest beyond keep_ckpts."""
        rngs = [_rng_state()]
        if self.ddp:
            gathered = [None] * self.world
            dist.all_gather_object(gathered, rngs[0])
            rngs = gathered
        if not self.master:
            return
        ckpt = {"kind": CKPT_KIND, "version": CKPT_VERSION, "step": self.step,
                "model": self.model.state_dict(), "ema": self.ema.state_dict(),
                "optimizer": self.opt.state_dict(), "scheduler": self.sched.state_dict(),
                "scaler": self.scaler.state_dict(), "rng": rngs, "world": self.world,
                "config": copy.deepcopy(self.cfg), "model_config": self.model.config,
                "codec": self.codec.state(), "planned_steps": self._planned_steps(),
                "elapsed": self._elapsed()}
        path = self.run_dir / f"ckpt_{self.step:08d}.pt"
        _atomic_save(ckpt, path)
        for old in ckpt_paths(self.run_dir)[:-max(1, self.cfg["keep_ckpts"])]:
            old.unlink()
        self.log(f"saved {path}")

    def _elapsed(self):
        return getattr(self, "_elapsed_before", 0.0) + time.time() - self._t_start

    # ------------------------------------------------------------------ the loop
    def _should_stop(self):
        """A signal (SIGUSR1/SIGTERM from Slurm) or a STOP file asks for a clean stop; all ranks
        must agree, else DDP would hang on the next all-reduce."""
        return self._any_rank(self._stop_signal or self.stop_file.exists())

    def _budget_over(self):
        m = self.cfg["minutes"]
        return self._any_rank(bool(m) and self._elapsed() >= 60 * m)

    def _any_rank(self, flag):
        """True on every rank if it is true on any (ranks must leave the loop together)."""
        if not self.ddp:
            return bool(flag)
        t = torch.tensor([float(flag)], device=self.device)
        dist.all_reduce(t)
        return t.item() > 0

    def _step_generator(self):
        # the noise of step s on rank r depends on (seed, s, r) alone, so a resumed run draws
        # exactly what the uninterrupted one would have drawn
        g = torch.Generator(device=self.device)
        g.manual_seed(hash_seed(self.cfg["seed"], self.step, self.rank))
        return g

    def train(self):
        cfg = self.cfg
        self._t_start = time.time()
        for s in (signal.SIGUSR1, signal.SIGTERM):
            try:
                signal.signal(s, self._on_signal)
            except (ValueError, AttributeError):  # not the main thread / no such signal
                pass
        loader = get_data(cfg, train=True, codec=self.codec,
                          start=self.step * cfg["grad_accum"], seed=cfg["seed"])
        stream = iter(loader)
        writer = self._tb()
        jsonl = open(self.run_dir / "log.jsonl", "a", encoding="utf-8") if self.master else None
        from tqdm import tqdm
        total = cfg["max_steps"] or None
        bar = tqdm(total=total, initial=self.step, disable=not self.master, unit="step",
                   dynamic_ncols=True)
        t_last, imgs_since = time.time(), 0
        exit_code = 0
        try:
            while True:
                if cfg["max_steps"] and self.step >= cfg["max_steps"]:
                    break
                if self._budget_over():
                    self.log(f"time budget of {cfg['minutes']} min reached at step {self.step}")
                    break
                if self._should_stop():
                    self.log(f"stop requested at step {self.step}: checkpointing; continue with "
                             "--resume")
                    exit_code = 3  # stopped early (pre-emption): no final evaluation
                    break
                loss, gnorm, n_imgs = self._train_step(stream)
                if loss is None:
                    self.bad_steps += 1
                    self.log(f"step {self.step}: non-finite loss or gradient, step skipped "
                             f"({self.bad_steps} in a row)")
                    self._write_log(jsonl, writer, {"step": self.step, "skipped": True})
                    if self.bad_steps >= cfg["max_bad_steps"]:
                        self.log(f"error: {self.bad_steps} non-finite steps in a row; stopping. "
                                 f"The last good checkpoint is kept in {self.run_dir}; lower "
                                 "--lr or check the statistics.")
                        return 4
                    continue
                self.bad_steps = 0
                self.step += 1
                imgs_since += n_imgs
                bar.update(1)
                if self.step == 20 and cfg["minutes"] and not cfg["max_steps"]:
                    per_step = self._elapsed() / 20
                    self._estimated_total = int(60 * cfg["minutes"] / per_step)
                if self.step % cfg["log_every"] == 0 or self.step == 1:
                    dt = time.time() - t_last
                    rec = {"step": self.step, "loss": loss, "lr": self.sched.get_last_lr()[0],
                           "grad_norm": gnorm, "img_per_s": imgs_since / max(dt, 1e-9),
                           "elapsed_s": round(self._elapsed(), 1)}
                    bar.set_postfix(loss=f"{loss:.4f}", img_s=f"{rec['img_per_s']:.1f}")
                    self._write_log(jsonl, writer, rec)
                    t_last, imgs_since = time.time(), 0
                if cfg["ckpt_every"] and self.step % cfg["ckpt_every"] == 0:
                    self.save()
                if cfg["eval_every"] and self.step % cfg["eval_every"] == 0:
                    self._validate(jsonl, writer)
        finally:
            bar.close()
        self.save()
        if self.ddp:
            self._check_sync(jsonl)
        if jsonl:
            jsonl.close()
        if writer:
            writer.close()
        return exit_code

    def _on_signal(self, signum, frame):
        self._stop_signal = True

    def _train_step(self, stream):
        """One optimiser step over grad_accum micro-batches. Returns (loss, grad norm, images),
        or (None, ..) when the loss or gradient was not finite (the step is skipped)."""
        cfg = self.cfg
        self.net.train()
        g = self._step_generator()
        total, n_imgs = 0.0, 0
        for micro in range(cfg["grad_accum"]):
            target, cond = next(stream)
            target = target.to(self.device, non_blocking=True)
            cond = cond.to(self.device, non_blocking=True)
            if cfg["channels_last"]:
                target = target.contiguous(memory_format=torch.channels_last)
                cond = cond.contiguous(memory_format=torch.channels_last)
            t = torch.randint(0, self.diffusion.timesteps, (target.shape[0],), generator=g,
                              device=self.device)
            noise = torch.randn(target.shape, generator=g, device=self.device)
            sync = micro == cfg["grad_accum"] - 1 or not self.ddp
            ctx = self.net.no_sync() if (self.ddp and not sync) else contextlib.nullcontext()
            with ctx, torch.autocast(self.device.type, dtype=self.amp_dtype,
                                     enabled=self.amp_dtype is not None):
                loss = self.diffusion.p_losses(self.net, target, cond, t, noise,
                                               cfg["p_uncond"], g) / cfg["grad_accum"]
            self.scaler.scale(loss).backward()
            total += loss.item()
            n_imgs += target.shape[0] * self.world
        self.scaler.unscale_(self.opt)
        gnorm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg["grad_clip"])
        finite = math.isfinite(total) and torch.isfinite(gnorm).item()
        if self.ddp:  # every rank must agree to skip, else weights diverge
            t = torch.tensor([float(finite)], device=self.device)
            dist.all_reduce(t, op=dist.ReduceOp.MIN)
            finite = t.item() > 0
        if not finite:
            self.opt.zero_grad(set_to_none=True)
            self.scaler.update()
            return None, None, n_imgs
        self.scaler.step(self.opt)
        self.scaler.update()
        self.opt.zero_grad(set_to_none=True)
        self.sched.step()
        self.ema.update_parameters(self.model)
        return total, gnorm.item(), n_imgs

    def _tb(self):
        if not self.master:
            return None
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            self.log("tensorboard not installed: logging to log.jsonl only")
            return None
        return SummaryWriter(str(self.run_dir / "tb"))

    def _write_log(self, jsonl, writer, rec):
        if not self.master:
            return
        jsonl.write(json.dumps(rec) + "\n")
        jsonl.flush()
        if writer:
            for k, v in rec.items():
                if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool):
                    writer.add_scalar(k, v, rec["step"])

    def _validate(self, jsonl, writer):
        """Derain a few held-out pairs with the EMA model: PSNR-Y in the log and a figure."""
        if not self.master or not self.cfg["val_csv"]:
            return
        from derain import evaluate_pairs
        res = evaluate_pairs(self.ema.module, self.codec, self.diffusion, self.cfg,
                             self.cfg["val_csv"], limit=self.cfg["eval_images"],
                             figure=self.run_dir / f"val_{self.step:08d}.png",
                             device=self.device, progress=False)
        rec = {"step": self.step, "val_psnr_y": res["psnr_y"], "val_ssim_y": res["ssim_y"],
               "val_input_psnr_y": res["input_psnr_y"]}
        self._write_log(jsonl, writer, rec)
        self.log(f"step {self.step}: validation PSNR-Y {res['psnr_y']:.2f} dB "
                 f"(rainy input {res['input_psnr_y']:.2f} dB) on {res['n']} pairs")

    def _check_sync(self, jsonl):
        """All ranks must hold the same weights after training; log the check."""
        h = weights_digest(self.model)
        hashes = [None] * self.world
        dist.all_gather_object(hashes, h)
        same = len(set(hashes)) == 1
        if self.master:
            jsonl.write(json.dumps({"step": self.step, "ranks_in_sync": same,
                                    "weights_digest": hashes}) + "\n")
        self.log(f"ranks hold identical weights: {same}")


def weights_digest(model):
    """SHA-256 of all parameters and buffers, in order."""
    h = hashlib.sha256()
    for v in model.state_dict().values():
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def final_evaluation(trainer):
    """Derain every held-out pair at full size with the EMA model, print PSNR-Y/SSIM-Y of the
    rainy input and of the result, and write the comparison figure and per-image CSV."""
    cfg = trainer.cfg
    from derain import evaluate_pairs
    res = evaluate_pairs(trainer.ema.module, trainer.codec, trainer.diffusion, cfg,
                         cfg["val_csv"], figure=trainer.run_dir / "final_comparison.png",
                         out_dir=trainer.run_dir / "derained", device=trainer.device,
                         progress=True)
    summary = {"step": trainer.step, "pairs": res["n"], "input_psnr_y": res["input_psnr_y"],
               "input_ssim_y": res["input_ssim_y"], "psnr_y": res["psnr_y"],
               "ssim_y": res["ssim_y"], "sampler": cfg["sampler"],
               "sample_steps": cfg["sample_steps"], "seconds_per_image": res["seconds_per_image"]}
    (trainer.run_dir / "final_eval.json").write_text(json.dumps(summary, indent=1) + "\n")
    print(f"\nheld-out pairs ({res['n']}, {cfg['val_csv']}), {cfg['sampler']} "
          f"{cfg['sample_steps']} steps:")
    print(f"  rainy input : PSNR-Y {res['input_psnr_y']:6.2f} dB   SSIM-Y {res['input_ssim_y']:.4f}")
    print(f"  derained    : PSNR-Y {res['psnr_y']:6.2f} dB   SSIM-Y {res['ssim_y']:.4f}   "
          f"({res['psnr_y'] - res['input_psnr_y']:+.2f} dB)")
    print(f"  figure {trainer.run_dir / 'final_comparison.png'}, images "
          f"{trainer.run_dir / 'derained'}")
    return summary


def main(argv=None):
    cfg, dry_run = resolve_config(argv)
    if dry_run:
        print(json.dumps(cfg, indent=1))
        return 0
    trainer = Trainer(cfg)
    try:
        trainer.setup()
    except (ValueError, OSError) as e:  # bad statistics, checkpoint, CSV: say which and why
        print(f"error: {e}", file=sys.stderr)
        return 2
    code = trainer.train()
    if code == 0 and trainer.master and cfg["final_eval"] and cfg["val_csv"]:
        final_evaluation(trainer)
    if trainer.ddp:
        dist.destroy_process_group()
    return code


if __name__ == "__main__":
    sys.exit(main())
