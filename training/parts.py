"""The levers a config builds and what one optimiser step does with them.

    parts = Parts(cfg, env)          # representation, process, network, EMA, loss, optimiser
    step = TrainStep(cfg, parts, env)
    loss, grad_norm, skipped, images = step(stream)      # device tensors: nothing read back
    plan = LRPlan(cfg["lr"], ...)    # warm-up, then cosine decay to the end of the run

bench.py times exactly this step.
"""
import contextlib
import copy
import math

import torch

from checkpoint import ema_weights
from diffusion import make_process
from helpers.errors import ConfigError
from losses import make_loss
from modules import build_network
from training.data import make_representation

# --amp: the autocast dtype on CUDA (the CPU trains in float32)
AMP = {"bf16": torch.bfloat16, "fp16": torch.float16, "none": None}


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
                                     weight_decay=cfg["weight_decay"],
                                     betas=(0.9, cfg["adam_beta2"]), fused=True)
        amp = AMP[cfg["amp"]]
        self.amp_dtype = amp if env.device.type == "cuda" else None  # the CPU trains in float32
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
        self.grad_accum = int(cfg["grad_accum"])
        clip = float(cfg["grad_clip"])
        if not clip >= 0:  # a negative max norm would flip the gradient
            raise ConfigError(f"--grad-clip must be >= 0 (0: no clipping), got {clip!r}")
        # 0: no clipping (the norm is still computed, for the log and the finite check)
        self.grad_clip = clip or float("inf")
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
