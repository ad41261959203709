"""Benchmark one diffusion training step of the UNet presets (and, optionally, the data loader).

Usage:
    python bench.py [--device cpu|cuda] [--models small,default,large] [--batch 8] [--size 64]
                    [--steps N] [--warmup W] [--threads T] [--amp bf16|fp16|none] [--compile]
                    [--channels 6] [--csv PAIRS.csv --stats STATS.json [--workers K]
                    [--representation magphase|realimag]]

Prints one JSON object per line: one per model, one for the data loader if asked, then a final
``{"summary": ...}`` line.

A training step is what ddpm training does: sample t uniformly, noise the target with a cosine
schedule (x_t = sqrt(abar) x0 + sqrt(1 - abar) eps), predict eps from (x_t, t, condition), MSE,
backward, clip the gradient norm to 1.0, AdamW step. Warm-up steps (allocator growth, oneDNN /
cuDNN algorithm selection, torch.compile) are excluded from the timing; s/step is the median of the
timed steps because on a shared machine single steps can be slowed down by other processes (the
mean is reported too).

Peak memory: on CPU every model runs in a fresh subprocess and reports its own maximum resident
set size (``resource.getrusage(...).ru_maxrss``, nothing subtracted, so it includes the ~0.5 GB
that importing torch costs); on CUDA ``torch.cuda.max_memory_allocated``. Models always run in
their own subprocess so one model's memory or compiled graphs never affect the next.

Default inputs are random tensors (the step time does not depend on the values). With
``--csv/--stats`` the real ``utils.FFTDataset`` loader is timed as well, to see whether loading
keeps up with training.
"""
import argparse
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

T_STEPS = 1000  # diffusion steps; t is sampled in [0, T_STEPS)

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
    p.add_argument("--channels", type=int, default=6,
                   help="channels of target and condition: 6 = spectra (with frequency "
                        "coordinates), 3 = pixel baseline (without)")
    p.add_argument("--csv", default=None, help="pairs CSV: also time utils.FFTDataset")
    p.add_argument("--stats", default=None, help="FFT statistics JSON for utils.FFTDataset")
    p.add_argument("--representation", choices=["magphase", "realimag"], default="magphase",
                   help="spectrum representation for --csv (must match the --stats file)")
    p.add_argument("--workers", type=int, default=0, help="DataLoader workers for --csv")
    p.add_argument("--data-batches", type=int, default=20, help="batches timed for --csv")
    p.add_argument("--_worker", default=None, help=argparse.SUPPRESS)  # internal: one model
    args = p.parse_args(argv)
    if args.device is None:
        import torch  # only when the default is needed
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
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


def cosine_alpha_bar(t, T=T_STEPS, s=0.008):
    """Cosine schedule (Nichol & Dhariwal 2021): abar(t) = f(t) / f(0), f(t) = cos^2(((t+1)/T + s)
    / (1 + s) * pi/2), for integer t in [0, T). Clamped away from 0 and 1 so neither the signal
    nor the noise vanishes completely."""
    import torch
    f = torch.cos(((t.double() + 1) / T + s) / (1 + s) * (math.pi / 2)) ** 2
    f0 = math.cos(s / (1 + s) * (math.pi / 2)) ** 2
    return (f / f0).clamp(1e-5, 0.9999).float()


def peak_rss_mb():
    """This process's maximum resident set size in MB (ru_maxrss is KB on Linux, bytes on macOS)."""
    import resource
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r / (1024 * 1024) if sys.platform == "darwin" else r / 1024


def run_model(args, name):
    """Build preset `name`, time the training step, return the result dict (runs in a worker)."""
    import torch
    import torch.nn.functional as F
    from modules import MODEL_PRESETS, UNet_conditional, count_parameters

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    dev = torch.device(args.device)
    cuda = dev.type == "cuda"
    if cuda:
        torch.backends.cudnn.benchmark = True  # fixed shapes: let cuDNN pick the fastest convs
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "none": None}[args.amp]

    c = args.channels
    model = UNet_conditional(in_channels=c, cond_channels=c, out_channels=c,
                             freq_coords=(c == 6), **MODEL_PRESETS[name])
    n_params = count_parameters(model)
    # channels_last is what tensor-core conv kernels want on GPU; on CPU oneDNN does fine with
    # the default layout, so leave it.
    mem_fmt = torch.channels_last if cuda else torch.contiguous_format
    model = model.to(dev, memory_format=mem_fmt).train()
    # The zero-initialised output conv would give zero gradients to everything else on the first
    # step, which is not representative (sparse/zero updates); randomise it for the benchmark.
    with torch.no_grad():
        model.conv_out.weight.normal_(0, 0.02)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.01,
                            **({"fused": True} if cuda else {}))
    scaler = torch.amp.GradScaler("cuda", enabled=(args.amp == "fp16" and cuda))
    fwd = torch.compile(model) if args.compile else model

    b, s = args.batch, args.size
    x0 = torch.randn(b, c, s, s, device=dev).contiguous(memory_format=mem_fmt)  # target
    cond = torch.randn(b, c, s, s, device=dev).contiguous(memory_format=mem_fmt)  # condition

    def sync():
        if cuda:
            torch.cuda.synchronize()

    def step():
        t = torch.randint(0, T_STEPS, (b,), device=dev)  # (B,)
        abar = cosine_alpha_bar(t)[:, None, None, None]  # (B, 1, 1, 1)
        eps = torch.randn_like(x0)  # (B, C, H, W)
        x_t = abar.sqrt() * x0 + (1 - abar).sqrt() * eps  # (B, C, H, W)
        with torch.autocast(dev.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            pred = fwd(x_t, t, cond)  # (B, C, H, W)
        loss = F.mse_loss(pred.float(), eps)
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        scaler.step(opt)
        scaler.update()
        return loss.detach()

    for _ in range(args.warmup):
        step()
    sync()
    times = []
    for _ in range(args.steps):
        t0 = time.perf_counter()
        loss = step()
        sync()
        times.append(time.perf_counter() - t0)
    if not math.isfinite(float(loss)):
        raise RuntimeError(f"{name}: non-finite loss {float(loss)}")

    med = statistics.median(times)
    res = dict(model=name, params_M=round(n_params / 1e6, 3), device=args.device,
               dtype=("float32" if amp_dtype is None else f"{args.amp}-autocast"),
               batch=b, size=s, channels=f"{2 * c}->{c}", steps=args.steps, warmup=args.warmup,
               s_per_step=round(med, 4), s_per_step_mean=round(statistics.fmean(times), 4),
               s_per_step_min=round(min(times), 4), img_per_s=round(b / med, 1),
               threads=torch.get_num_threads(), compile=bool(args.compile),
               channels_last=cuda)
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
           "--channels", str(args.channels), "--models", name]
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
    try:
        from utils import FFTDataset  # lazily: the data pipeline is optional for the model bench
    except Exception as e:  # ImportError, or utils.py mid-edit by a colleague
        msg = (f"data loader not timed: cannot import FFTDataset from utils.py "
               f"({type(e).__name__}: {e})")
        print(msg, file=sys.stderr)
        return dict(data_loader="skipped", reason=msg)
    import torch
    from torch.utils.data import DataLoader

    def failed(e):
        msg = f"data loader failed: {type(e).__name__}: {e}"
        print(msg, file=sys.stderr)
        return dict(data_loader="FFTDataset", csv=args.csv, stats=args.stats, error=msg)

    t0 = time.perf_counter()
    try:
        ds = FFTDataset(args.csv, args.stats, args.size, representation=args.representation,
                        target="diff", train=True)
    except Exception as e:  # a wrong path or mismatched statistics: report it, keep the bench
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
            target, cond = next(it)
        except StopIteration:
            break
        except Exception as e:  # e.g. an unreadable image
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
    expected = [args.batch, 6, args.size, args.size]
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
    if large and args.size == 64 and args.channels == 6:
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
