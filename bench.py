"""Benchmark one training step of the UNet presets (and, optionally, the data loader).

Usage:
    python bench.py [--device cpu|cuda] [--models small,default,large] [--batch 8] [--size 64]
                    [--steps N] [--warmup W] [--threads T] [--amp bf16|fp16|none] [--compile]
                    [--representation realimag|magphase|pixels|...] [--loss model|image|mix]
                    [--csv PAIRS.csv --stats STATS.json [--workers K]]

Prints one JSON object per line: one per model, one for the data loader if asked, then a final
``{"summary": ...}`` line.

The step timed is the training script's own (ddpm_conditional.TrainStep, built from launch()'s
defaults with the options above: the same schedule, prediction, loss, optimiser, gradient
clipping, EMA update and memory format), fed with random batches of the representation's shape.
Warm-up steps (allocator growth, oneDNN / cuDNN algorithm selection, torch.compile) are excluded
from the timing; s/step is the median of the timed steps because on a shared machine single
steps can be slowed down by other processes (the mean is reported too).

Peak memory: on CPU every model runs in a fresh subprocess and reports its own maximum resident
set size (``resource.getrusage(...).ru_maxrss``, nothing subtracted, so it includes the ~0.5 GB
that importing torch costs); on CUDA ``torch.cuda.max_memory_allocated``. Models always run in
their own subprocess so one model's memory or compiled graphs never affect the next.

Inputs are random tensors (the step time does not depend on the values). With ``--csv/--stats``
the real ``utils.FFTDataset`` loader is timed as well, to see whether loading keeps up with
training.
"""
import argparse
import itertools
import json
import math
import os
import statistics
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.abspath(__file__))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

import torch  # noqa: E402

import representations  # noqa: E402
from helpers.errors import InputError  # noqa: E402
from ddpm_conditional import launch  # noqa: E402
from diffusion import Bridge  # noqa: E402
from losses import LOSSES  # noqa: E402
from modules import NETWORKS  # noqa: E402

# The targets the "large" preset is designed for (see modules.MODEL_PRESETS).
CPU_TARGET = dict(max_s_per_step=2.0, max_peak_rss_mb=2048.0)  # fp32, batch 8, 64x64
CUDA_TARGET = dict(min_img_per_s=1000.0)  # bf16, 64x64, H100


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", choices=["cpu", "cuda"], default=None,
                   help="default: cuda when available, else cpu")
    p.add_argument("--models", default=None,
                   help="comma-separated presets of modules.MODEL_PRESETS "
                        "(default: default,large on CPU; small,default,large on CUDA)")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--size", type=int, default=64, help="square crop size")
    p.add_argument("--steps", type=int, default=None, help="timed steps (default 5 CPU, 30 CUDA)")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first (default 2)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--amp", choices=["bf16", "fp16", "none"], default=None,
                   help="autocast dtype (default: bf16 on CUDA, none on CPU)")
    p.add_argument("--compile", action="store_true", help="torch.compile the model")
    p.add_argument("--representation", choices=representations.names(), default=None,
                   help="what the model's channels hold (default: launch()'s); for --csv it "
                        "must match the --stats file")
    p.add_argument("--loss", choices=sorted(LOSSES), default=None,
                   help="training loss (default: launch()'s)")
    p.add_argument("--network", choices=sorted(NETWORKS), default=None,
                   help="the network (default: launch()'s); --models names its size")
    p.add_argument("--bridge-states", choices=Bridge.STATES, default=None,
                   help="the bridge's training states (default: launch()'s); own adds a "
                        "forward pass without gradient on the draws below the rainy end")
    p.add_argument("--csv", default=None, help="pairs CSV: also time utils.FFTDataset")
    p.add_argument("--stats", default=None, help="FFT statistics JSON for utils.FFTDataset")
    p.add_argument("--workers", type=int, default=0, help="DataLoader workers for --csv")
    p.add_argument("--data-batches", type=int, default=20, help="batches timed for --csv")
    p.add_argument("--_worker", default=None, help=argparse.SUPPRESS)  # internal: one model
    args = p.parse_args(argv)
    defaults = launch()
    args.representation = args.representation or defaults["representation"]
    args.loss = args.loss or defaults["loss"]
    args.network = args.network or defaults["network"]
    args.bridge_states = args.bridge_states or defaults["bridge_states"]
    from helpers.devices import DeviceError, resolve_device
    try:  # the one resolver (the worker's Distributed resolves the same name again)
        args.device = resolve_device(args.device or "auto").type
    except DeviceError as e:
        p.error(str(e))
    if args.amp is None:
        args.amp = "bf16" if args.device == "cuda" else "none"
    if args.models is None:
        args.models = "default,large" if args.device == "cpu" else "small,default,large"
    if args.steps is None:
        args.steps = 5 if args.device == "cpu" else 30
    if args.steps < 1 or args.batch < 1 or args.size < 1 or args.warmup < 0:
        p.error("--steps, --batch and --size must be >= 1, --warmup >= 0")
    if (args.csv is None) != (args.stats is None):
        p.error("--csv and --stats go together")
    return args


def peak_rss_mb():
    """This process's maximum resident set size in MB (ru_maxrss is KB on Linux, bytes on macOS)."""
    import resource
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r / (1024 * 1024) if sys.platform == "darwin" else r / 1024


def bench_config(args, name):
    """launch()'s defaults with the benchmark's options: the configuration whose step is timed."""
    return {**launch(), "model": name, "batch_size": args.batch, "crop": args.size,
            "representation": args.representation, "loss": args.loss, "network": args.network,
            "bridge_states": args.bridge_states, "device": args.device,
            "amp": args.amp, "compile": bool(args.compile), "threads": args.threads or 0}


def random_batch(rep, batch, size, device):
    """A batch of the loader's layout (utils.FFTDataset) with random values."""
    g = torch.Generator().manual_seed(0)
    c, h, w = rep.shape(size, size)
    return {"target": torch.randn(batch, c, h, w, generator=g),
            "cond": torch.randn(batch, c, h, w, generator=g),
            "rain": torch.rand(batch, 3, size, size, generator=g),
            "clean": torch.rand(batch, 3, size, size, generator=g),
            "position": torch.arange(batch)}  # per-sample noise, as in training


def unit_ranges(rep, size):
    """Normalisation ranges of the representation's shape, [-1, 1] as is: the step time does not
    depend on the statistics."""
    shape = rep.shape(size, size)
    lo, hi = -torch.ones(shape, dtype=torch.float64), torch.ones(shape, dtype=torch.float64)
    return {"ranges": {"target": (lo.numpy(), hi.numpy()), "cond": (lo.numpy(), hi.numpy())}}


def run_model(args, name):
    """Build preset `name` as training does and time ddpm_conditional.TrainStep (in a worker)."""
    from training.distributed import Distributed
    from training.parts import Parts, TrainStep
    from modules import count_parameters

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    cfg = bench_config(args, name)
    env = Distributed(cfg["device"])
    cuda = env.device.type == "cuda"
    if cuda:
        torch.backends.cudnn.benchmark = True  # fixed shapes: let cuDNN pick the fastest convs
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    rep = representations.from_config(cfg)
    if rep.needs_statistics:
        rep = representations.from_config(cfg, unit_ranges(rep, args.size))
    parts = Parts(cfg, env, representation=rep)
    step = TrainStep(cfg, parts, env)
    stream = itertools.repeat(random_batch(rep, args.batch, args.size, env.device))

    def sync():
        if cuda:
            torch.cuda.synchronize()

    for _ in range(args.warmup):
        step(stream)
    sync()
    times, loss, skipped = [], None, None
    for _ in range(args.steps):
        t0 = time.perf_counter()
        loss, _, skipped, _ = step(stream)
        sync()
        times.append(time.perf_counter() - t0)
    if loss is None or bool(skipped) or not math.isfinite(float(loss)):
        raise RuntimeError(f"{name}: non-finite loss {loss}")

    med = statistics.median(times)
    res = dict(model=name, params_M=round(count_parameters(parts.model) / 1e6, 3),
               device=args.device, dtype=("float32" if parts.amp_dtype is None
                                          else f"{args.amp}-autocast"),
               batch=args.batch, size=args.size, representation=rep.name, loss=cfg["loss"],
               network=cfg["network"], process=cfg["process"],
               bridge_states=cfg["bridge_states"],
               channels=f"{parts.model.config['in_channels'] + parts.model.config['cond_channels']}"
                        f"->{parts.model.config['out_channels']}",
               steps=args.steps, warmup=args.warmup, s_per_step=round(med, 4),
               s_per_step_mean=round(statistics.fmean(times), 4),
               s_per_step_min=round(min(times), 4), img_per_s=round(args.batch / med, 1),
               threads=torch.get_num_threads(), compile=bool(args.compile),
               channels_last=bool(cfg["channels_last"]))
    if cuda:
        res["peak_mem_mb"] = round(torch.cuda.max_memory_allocated() / 2 ** 20, 1)
        res["gpu"] = torch.cuda.get_device_name()
    res["peak_rss_mb"] = round(peak_rss_mb(), 1)
    if hasattr(os, "getloadavg"):
        res["loadavg_1m"] = round(os.getloadavg()[0], 2)  # >threads means a shared, noisy machine
    return res


def run_in_subprocess(args, name):
    """Run one model's benchmark in a fresh interpreter and return its JSON result."""
    cmd = [sys.executable, os.path.abspath(__file__), "--_worker", name,
           "--device", args.device, "--batch", str(args.batch), "--size", str(args.size),
           "--steps", str(args.steps), "--warmup", str(args.warmup), "--amp", args.amp,
           "--representation", args.representation, "--loss", args.loss, "--network", args.network,
           "--bridge-states", args.bridge_states, "--models", name]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    if args.compile:
        cmd.append("--compile")
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=None, text=True)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        return dict(model=name, device=args.device,
                    error=f"worker exited with code {proc.returncode} (see stderr above)")
    return json.loads(lines[-1])


def time_loader(args):
    """Time utils.FFTDataset through a DataLoader; returns a result dict (or a 'skipped' one)."""
    from torch.utils.data import DataLoader

    from helpers.images import ImageError
    from representations.statistics import load_statistics
    from utils import FFTDataset

    def failed(e):
        msg = f"data loader failed: {type(e).__name__}: {e}"
        print(msg, file=sys.stderr)
        return dict(data_loader="FFTDataset", csv=args.csv, stats=args.stats, error=msg)

    t0 = time.perf_counter()
    try:
        cfg = {**launch(), "representation": args.representation, "crop": args.size}
        rep = representations.from_config(cfg, load_statistics(args.stats))
        ds = FFTDataset(args.csv, rep, train=True)
    except InputError as e:  # a wrong path or mismatched statistics: report it
        return failed(e)
    t_init = time.perf_counter() - t0
    dl = DataLoader(ds, batch_size=args.batch, shuffle=True, num_workers=args.workers,
                    drop_last=True, persistent_workers=False)
    times, shapes = [], None
    it = iter(dl)
    t0 = time.perf_counter()
    first = None
    for i in range(args.data_batches + 1):  # the first batch (worker start-up) is not timed
        try:
            batch = next(it)
            target, cond = batch["target"], batch["cond"]
        except StopIteration:
            break
        except ImageError as e:  # an unreadable image
            return failed(e)
        now = time.perf_counter()
        if i == 0:
            first = now - t0
            shapes = dict(target=list(target.shape), condition=list(cond.shape),
                          dtype=str(target.dtype).replace("torch.", ""))
        else:
            times.append(now - t0)
        t0 = now
    res = dict(data_loader="FFTDataset", csv=args.csv, representation=args.representation,
               pairs=len(ds), batch=args.batch,
               size=args.size, workers=args.workers, init_s=round(t_init, 3),
               first_batch_s=round(first, 4) if first is not None else None, shapes=shapes)
    if times:
        med = statistics.median(times)
        res.update(batches=len(times), s_per_batch=round(med, 4), img_per_s=round(args.batch / med, 1))
    else:
        res["note"] = "fewer than 2 batches in the data set: nothing timed"
    expected = [args.batch, *rep.shape(args.size, args.size)]
    if shapes and (shapes["target"] != expected or shapes["condition"] != expected):
        res["warning"] = f"expected (target, condition) batches of shape {expected}"
    return res


def main(argv=None):
    args = parse_args(argv)
    if args._worker:  # child process: one model, one JSON line
        print(json.dumps(run_model(args, args._worker)), flush=True)
        return 0

    from modules import MODEL_PRESETS  # cheap check of the names before spawning anything
    names = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = [m for m in names if m not in MODEL_PRESETS]
    if unknown:
        print(f"unknown model(s) {unknown}; choose from {sorted(MODEL_PRESETS)}", file=sys.stderr)
        return 2

    results = []
    for name in names:
        res = run_in_subprocess(args, name)
        print(json.dumps(res), flush=True)
        results.append(res)

    loader = None
    if args.csv:
        loader = time_loader(args)
        print(json.dumps(loader), flush=True)

    summary = dict(summary=[{k: r.get(k) for k in ("model", "params_M", "s_per_step", "img_per_s",
                                                   "peak_rss_mb", "peak_mem_mb", "error")
                             if r.get(k) is not None} for r in results])
    # Check the design targets where this run's settings match the ones they are defined for.
    large = next((r for r in results if r.get("model") == "large" and "error" not in r), None)
    if large and args.size == 64 and args.representation != "pixels":
        if args.device == "cpu" and args.amp == "none" and args.batch == 8:
            summary["large_cpu_target"] = dict(
                CPU_TARGET, met=(large["s_per_step"] <= CPU_TARGET["max_s_per_step"]
                                 and large["peak_rss_mb"] <= CPU_TARGET["max_peak_rss_mb"]))
        elif args.device == "cuda" and args.amp == "bf16":
            summary["large_cuda_target"] = dict(
                CUDA_TARGET, met=large["img_per_s"] >= CUDA_TARGET["min_img_per_s"],
                note="throughput needs a large batch (e.g. --batch 256) and --compile")
    if loader and "s_per_batch" in loader:
        summary["loader_img_per_s"] = loader["img_per_s"]
    print(json.dumps(summary), flush=True)
    return 1 if any("error" in r for r in results + [loader or {}]) else 0


if __name__ == "__main__":
    sys.exit(main())
