"""Train the conditional diffusion model that removes rain in the Fourier domain.

    python ddpm_conditional.py                          # embedded synthetic set, ~10 min on a CPU
    python ddpm_conditional.py --preset rain100l        # Rain100L pairs 1-50, validate on 51-60
    python ddpm_conditional.py --lr 1e-4 --model large --minutes 60 --run-dir runs/big
    python ddpm_conditional.py --config my.yaml --dry-run   # print the resolved config and exit
    python ddpm_conditional.py --run-dir runs/x --resume    # continue from runs/x's last checkpoint
    torchrun --standalone --nproc_per_node=4 ddpm_conditional.py --preset rain100l   # DDP

Every default is in launch() below; a preset, then a --config file (JSON or YAML), then --key
value flags override it (training/config.py). The model learns to generate the normalised
spectrum of clean - rain given the spectrum of the rainy image (the representation,
representations/); at the end the held-out pairs are derained at full size (sampling.py) and
scored with PSNR-Y / SSIM-Y beside the rainy input. This file holds launch(), the presets, the
loop (Trainer) and the entry point; the pieces it calls are in training/: config, data
(the presets' CSVs and statistics), distributed (rank and device), parts (the levers built from
the config, one optimiser step, the learning-rate plan, the EMA) and evaluation.
"""
import copy
import json
import random
import signal
import sys
import time
from pathlib import Path

import numpy as np
import torch

from checkpoint import (CheckpointError, ckpt_paths, latest_checkpoint, load_checkpoint,
                        rng_state, save_checkpoint, set_rng_state)
from helpers.devices import DeviceError
from helpers.errors import InputError
from helpers.images import write_text
from helpers.seeding import hash_seed
from training import config
from training.data import data_paths, portable, prepare_data
from training.distributed import Distributed, weights_digest
from training.evaluation import final_evaluation, make_validator
from training.parts import LRPlan, Parts, StepStats, TrainStep
from training.runlog import RunLog, say_above_bar
from utils import get_data


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
        network="naf",           # naf: decode the spectral state to pixels, a NAFNet-style
                                 # trunk, encode back (an x0 estimate) | naf_fft: with a Res-FFT
                                 # branch per block | naf_conv: its control, no FFT | naf_gf: a
                                 # learned weight per frequency of the window (a global filter)
                                 # in the outer levels' blocks | pixel_trunk, pixel_trunk_fft: a
                                 # U-Net trunk instead (the default until the 10-minute,
                                 # 2-seed screen of STUDY.md) | unet: 3x3 U-Net over the
                                 # representation's channels
                                 # | ffc: with a global Fourier branch per block (modules.NETWORKS)
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
        bridge_param="skip",     # bridge: what the network outputs: skip (x0 = x_t - s start
                                 # + s F: the inversion that ignores the noise plus the
                                 # network's correction, weighted by s) | x0 (the estimate)
        bridge_states="own",     # bridge: the training states below the rainy end: own (from
                                 # the network's own first estimate, as the sampler's second
                                 # step sees them) | clean (built from the target). own + skip:
                                 # level with clean + x0 at one step (35 min, 2 seeds: +0.04 /
                                 # -0.05 dB), and more sampling steps stop costing (STUDY.md)
        freq_schedule=0.0,       # diffusion: noise low frequencies last (0: one schedule; s in
                                 # (0, 1): coefficient at radius r follows abar ** (1 - s (1 - r)))
        timesteps=1000,          # training noise levels
        schedule="cosine",       # cosine | linear
        prediction="x0",         # eps | x0 | v: what a diffusion's network outputs (the bridge
                                 # and regression predict x0)
        loss="psnr",             # psnr: each window's -PSNR of the decoded x0 estimate (every
                                 # window's dB alike, as the benchmarks' mean PSNR; STUDY.md:
                                 # +0.9 / -0.2 dB on Rain100L / Rain100H against image, 2 seeds
                                 # at 10 min, +1.1 / -0.2 at 35) | image: MSE of the decoded x0
                                 # in image space (the windows with most rain left dominate) |
                                 # model: MSE of the prediction | mix | image_fft: image + an
                                 # L1 on the decoded x0's FFT (losses.py)
        loss_mix=0.5,            # weight of the image part of loss=mix
        fft_loss_weight=0.1,     # image_fft: weight of the FFT L1 at each scale
        fft_loss_scales=3,       # image_fft: scales (the window, then halved each time)
        psnr_floor=1e-6,         # psnr: the MSE floor in its log (60 dB; larger moves the
                                 # windows' weighting back towards the image MSE's, losses.py)
        p_uncond=0.0,            # condition dropout in training (>0 enables guidance)
        # ---- optimisation
        batch_size=16,           # per process and micro-batch
        grad_accum=1,            # micro-batches per optimiser step
        lr=1e-3,                 # peak learning rate (AdamW)
        weight_decay=0.0,        # AdamW weight decay
        adam_beta2=0.99,         # AdamW's second-moment decay (NAFNet's recipe: 0.9)
        warmup_steps=200,        # linear warm-up, then cosine decay to lr_min_ratio * lr
        lr_min_ratio=0.05,       # final learning rate as a fraction of lr
        max_steps=0,             # optimiser steps (0: no limit, use minutes)
        minutes=10.0,            # wall-clock budget for training (0: no limit, use max_steps)
        grad_clip=1.0,           # clip the global gradient norm to this (0: no clipping)
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
        flips=1,                 # test-time self-ensemble: the mean over 1, 2 or 4 mirrored
                                 # copies of the image, each derained and mirrored back (that
                                 # many times the cost; STUDY.md, nineteenth session)
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


# Presets fill in the data; their files are made on first use (training/data.py).
PRESETS = {
    "synthetic": dict(),
    "rain100l": dict(crop=64, minutes=60.0, ckpt_every=1000),
    "rain100h": dict(crop=64, minutes=60.0, ckpt_every=1000),
    "rain100": dict(crop=64, minutes=60.0, ckpt_every=1000),
    "custom": dict(),
}
EXIT_STOPPED, EXIT_NON_FINITE, EXIT_OUT_OF_SYNC = 3, 4, 5


def resolve_config(argv=None):
    """launch() < preset < --config file < --key value. Returns (config, dry_run)."""
    return config.resolve_config(argv, launch, PRESETS, description=__doc__.split("\n")[0])


def find_resume(cfg, run_dir):
    """The checkpoint path cfg['resume'] names (None: start from scratch)."""
    r = cfg["resume"]
    if r in ("auto", "latest"):
        return latest_checkpoint(run_dir)
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
        self.say = (log or say_above_bar) if env.master else (lambda msg: None)
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
        previous = {}  # put back when the loop ends: a handler left installed would hold the
        for s in (signal.SIGUSR1, signal.SIGTERM):  # trainer, and under DDP its process group,
            try:                                    # until the interpreter shuts down
                previous[s] = signal.signal(s, self._on_signal)
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
            for s, handler in previous.items():
                signal.signal(s, handler)
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


# ===================================================================== main
def setup(cfg, env, log=None):
    """Data, seeds, the levers and the loop for a resolved config -> Trainer."""
    if env.master:
        cfg.update(prepare_data(cfg, log or say_above_bar))
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
        write_text(run_dir / "config.json", json.dumps(portable(cfg), indent=1) + "\n")
    n_params = sum(p.numel() for p in parts.model.parameters())
    trainer.say(f"model {cfg['model']}: {n_params / 1e6:.2f}M parameters on {env.device}"
                f" x{env.world}; data {cfg['csv']} ({cfg['representation']}, {cfg['target']}, "
                f"loss {cfg['loss']}, crop {cfg['crop']})")
    return trainer


def run(cfg, env):
    """Train (and evaluate) a resolved config; returns the exit status."""
    try:
        trainer = setup(cfg, env)
    except InputError as e:  # bad statistics, checkpoint, CSV, settings: say which and why
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # a run directory that cannot be made, a file that cannot be read
        if e.filename is None:
            raise
        print(f"error: {e.filename}: {e.strerror}", file=sys.stderr)
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
        print(json.dumps(portable(data_paths(cfg)), indent=1))
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
            write_text(Path(cfg["run_dir"]) / "exit_status", f"{code}\n")
    return code


if __name__ == "__main__":
    sys.exit(main())
