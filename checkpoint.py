"""Checkpoints: the one place that writes, reads and rebuilds them.

    save_checkpoint(state, "runs/x/ckpt_00001000.pt")    # atomic: temporary file, then rename
    ckpt = load_checkpoint(path)                        # torch.load(weights_only=True) + checks
    model, rep, diffusion, cfg = model_from_checkpoint(ckpt)
    derainer = load_derainer(path, device="cpu", sample_steps=20)   # flags override the config

A checkpoint is a dict of tensors and plain values only. A training checkpoint holds kind,
version, step, model, ema, optimizer, scaler, rng (one entry per rank), world, config (the
resolved config of the run, which names every lever: representation, loss, network, sampler
settings), model_config (the network's constructor arguments), representation (its state:
settings and normalisation) and elapsed (training seconds); an export (export_checkpoint) holds
kind, version, step, model (the EMA weights), config, model_config, representation,
inference_only and exported_from. Version 1 checkpoints (before representations and losses were
separate objects) are converted on load, and keys that did not exist yet get the value that
reproduces what such a checkpoint did (HISTORICAL).
"""
import os
import pickle
import random
import zipfile
from pathlib import Path

import numpy as np
import torch

import representations
from diffusion import make_process
from helpers.errors import ConfigError, InputError
from modules import build_network
from sampling import Derainer, sample_settings

KIND = "fourier-ddpm-derain"
VERSION = 2
# What torch.load raises for a truncated, damaged or foreign file (checked on torch 2.11-2.14):
# a broken zip archive (RuntimeError from its stream reader, OSError, EOFError), a legacy pickle
# of the wrong layout (KeyError, ValueError, UnicodeDecodeError), an object the safe unpickler
# refuses (pickle.UnpicklingError).
LOAD_ERRORS = (RuntimeError, OSError, EOFError, KeyError, ValueError, UnicodeDecodeError,
               pickle.UnpicklingError, zipfile.BadZipFile)
REQUIRED = ("step", "model", "config", "model_config", "representation")
# Not defaults: config keys added after version 2 was introduced, each with the value that
# reproduces what a checkpoint written before it existed did (the code of that time).
HISTORICAL = {"process": "diffusion", "network": "unet", "coupled": False, "bridge_noise": 0.1,
              "norm_gamma": 0.5, "block": 8, "freq_schedule": 0.0, "bridge_end": 0.0,
              "channels_last": True, "p_uncond": 0.0, "bridge_param": "x0",
              "fft_loss_weight": 0.1, "fft_loss_scales": 3, "bridge_states": "clean",
              "psnr_floor": 1e-6, "adam_beta2": 0.99, "flips": 1}


class CheckpointError(InputError):
    """A checkpoint that cannot be used; the message names the file and what to do."""


def ckpt_paths(run_dir):
    """The run directory's checkpoints, oldest (lowest step) first."""
    return sorted(Path(run_dir).glob("ckpt_*.pt"))


# ---------------------------------------------------------------- RNG states
def rng_state():
    """The RNG states of torch (CPU and every CUDA device), NumPy and Python, as CPU tensors and
    plain values (a checkpoint holds one per rank; it is loaded to the CPU, where
    set_rng_state needs them)."""
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


def save_checkpoint(state, path):
    """torch.save to a temporary file beside `path`, then rename: never a half-written file."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    torch.save({"kind": KIND, "version": VERSION, **state}, tmp)
    os.replace(tmp, path)


def load_checkpoint(path, map_location="cpu"):
    """Load a checkpoint of this repository safely (weights_only); CheckpointError otherwise.
    `path` may be a run directory: its newest checkpoint is taken."""
    path = Path(path)
    if path.is_dir():
        found = latest_checkpoint(path)
        if found is None:
            raise CheckpointError(f"{path}: no checkpoint (*.pt) in this folder")
        path = found
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except LOAD_ERRORS as e:
        detail = str(e).splitlines()[0][:200] if str(e) else ""
        raise CheckpointError(f"{path}: not a readable checkpoint ({type(e).__name__}: "
                              f"{detail}); it may be truncated or damaged: use an earlier "
                              "checkpoint of the run") from e
    if not isinstance(ckpt, dict) or ckpt.get("kind") != KIND:
        raise CheckpointError(f"{path}: not a checkpoint of this repository (no kind "
                              f"{KIND!r}); train one with ddpm_conditional.py")
    if ckpt.get("version") == 1:
        ckpt = _from_version_1(ckpt)
    if ckpt.get("version") != VERSION:
        raise CheckpointError(f"{path}: checkpoint version {ckpt.get('version')!r}, this code "
                              f"reads version {VERSION}; update the repository")
    ckpt["config"] = {**HISTORICAL, **ckpt.get("config", {})}
    mc = ckpt.get("model_config")
    if isinstance(mc, dict) and "ffc" in mc:  # before fft_branch: a U-Net with or without FFC
        mc = dict(mc)
        mc["fft_branch"] = "ffc" if mc.pop("ffc") else "none"
        ckpt["model_config"] = mc
    if isinstance(ckpt.get("representation"), dict):  # the same for the representation's state
        name = ckpt["representation"].get("name")
        ckpt["representation"] = {"norm_gamma": HISTORICAL["norm_gamma"],
                                  "options": {"block": HISTORICAL["block"]}
                                  if name == "blockdct" else {},
                                  **ckpt["representation"]}
    missing = [k for k in REQUIRED if k not in ckpt]
    if missing:
        raise CheckpointError(f"{path}: checkpoint is incomplete (no {', '.join(missing)}); use "
                              "an earlier checkpoint of the run")
    ckpt["path"] = str(path)
    return ckpt


def _from_version_1(ckpt):
    """A version-1 checkpoint in version 2's layout: the codec's state becomes the
    representation's, the frequency coordinates move from the U-Net to its wrapper."""
    codec = ckpt["codec"]
    name = "pixels" if codec["domain"] == "pixel" else codec["representation"]
    model_config = dict(ckpt["model_config"])
    if model_config.pop("freq_coords", False):
        model_config["cond_channels"] += 3
    cfg = {"loss": "model", "loss_mix": 0.5, "ensemble": 1, "sample_batch": 32,
           "signed_log": codec["log"], **HISTORICAL, **ckpt["config"], "representation": name}
    cfg.pop("domain", None)
    rep = {k: codec[k] for k in ("target", "norm", "crop", "log")}
    rep.update(name=name, **({"ranges": codec["ranges"]} if codec.get("ranges") else {}))
    prefix = lambda state, p: {(p + k if not k.startswith(p) else k): v for k, v in state.items()}
    out = {**ckpt, "version": VERSION, "config": cfg, "model_config": model_config,
           "representation": rep, "model": prefix(ckpt["model"], "trunk.")}
    if ckpt.get("ema"):
        out["ema"] = {("module.trunk." + k[len("module."):] if k.startswith("module.") else k): v
                      for k, v in ckpt["ema"].items()}
    del out["codec"]
    return out


def ema_weights(ema_state):
    """The model's weights from an EMA state ("module."-prefixed names, plus n_averaged: the
    layout of torch.optim.swa_utils.AveragedModel and of ddpm_conditional.EMA)."""
    return {k[len("module."):]: v for k, v in ema_state.items() if k.startswith("module.")}


def model_from_checkpoint(ckpt, ema=True, device="cpu"):
    """(model in eval mode on `device`, representation, diffusion, config) from a loaded
    checkpoint; the EMA weights unless ema=False."""
    where = ckpt.get("path", "checkpoint")
    cfg = ckpt["config"]
    try:
        rep = representations.from_state(ckpt["representation"])
        diffusion = make_process(cfg, rep)
        model = build_network(cfg, rep, trunk_config=ckpt["model_config"])
    except (KeyError, ConfigError) as e:  # a setting missing or unknown to this code
        raise CheckpointError(f"{where}: checkpoint is inconsistent ({type(e).__name__}: "
                              f"{e}); use an earlier checkpoint of the run, or the code it was "
                              "written with") from e
    state = ema_weights(ckpt["ema"]) if ema and ckpt.get("ema") else ckpt["model"]
    try:
        model.load_state_dict(state)
    except RuntimeError as e:  # missing, unexpected or mis-shaped weights
        raise CheckpointError(f"{where}: its weights do not fit its model "
                              f"({str(e).splitlines()[0][:200]}); use an earlier checkpoint "
                              "of the run") from e
    model.eval()
    # NHWC: ~1.3x faster sampling on CPU too, same numbers; one move, the statistics with it
    fmt = torch.channels_last if cfg["channels_last"] else torch.preserve_format
    return model.to(device, memory_format=fmt), rep.to(device), diffusion, cfg


def export_checkpoint(src, dst, fp16=False):
    """Write an inference-only checkpoint of `src` to `dst` (atomically): the EMA weights (as
    float16 with fp16), the config, the network's arguments and the representation; nothing of
    the optimiser. derain.py and load_derainer read it like a training checkpoint. Returns the
    sizes of both files in bytes."""
    ckpt = load_checkpoint(src)
    state = ema_weights(ckpt["ema"]) if ckpt.get("ema") else ckpt["model"]
    if fp16:
        state = {k: v.half() if v.is_floating_point() else v for k, v in state.items()}
    out = {"step": ckpt["step"], "model": state, "config": ckpt["config"],
           "model_config": ckpt["model_config"], "representation": ckpt["representation"],
           "inference_only": True, "exported_from": Path(ckpt["path"]).name}
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint(out, dst)
    return Path(ckpt["path"]).stat().st_size, dst.stat().st_size


def latest_checkpoint(path):
    """The checkpoint a folder stands for, or None: in a run directory (it holds ckpt_*.pt) the
    one of the highest step, the run's last; in any other folder (e.g. runs/) the most recently
    written .pt anywhere below it (a run's last checkpoint or an export)."""
    path = Path(path)
    if not path.is_dir():
        return None
    own = ckpt_paths(path)
    if own:
        return own[-1]
    found = [p for p in path.rglob("*.pt") if p.is_file()]
    return max(found, key=lambda p: p.stat().st_mtime) if found else None


def load_derainer(path, device="cpu", ema=True, **overrides):
    """A sampling.Derainer from a checkpoint file; sampling settings from its config unless an
    override (sampler, sample_steps, eta, guidance, clip_x0, ensemble, sample_batch, flips) is
    given."""
    ckpt = load_checkpoint(path)
    model, rep, diffusion, cfg = model_from_checkpoint(ckpt, ema=ema, device=device)
    return Derainer(model, rep, diffusion, sample_settings(cfg, **overrides), device,
                    name=Path(ckpt["path"]).name), cfg
