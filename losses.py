"""Training losses: objects chosen by name (`--loss`), recorded in the checkpoint's config.

    loss = make_loss(cfg, diffusion, representation)
    per_element = loss(net, batch, generator)       # the training loop takes its mean

A loss draws the time and the noise of each sample through the process (diffusion.py), from a
generator of its own seeded by (seed, the sample's position in the run's stream), so a resumed
run draws what the uninterrupted one would have and W ranks of B samples draw what one process of
W B samples draws; it makes the network's input (the noised target, or a point on the bridge from
the rainy input), calls the network and compares. The batch (utils.FFTDataset) carries the rainy and clean windows as well,
so a loss can decode the network's x0 estimate and measure it in image space.

    model  MSE of the network's output in the model's space (what the process asks for: the
           prediction named by --prediction, eps, x0 or v, for a diffusion; x0 otherwise).
    image  MSE of the decoded x0 estimate against the clean window, in image space. With the
           orthonormal FFT this is the squared error of the linear spectrum (Parseval), so every
           frequency is weighted by what it costs in PSNR; the signed log and the per-frequency
           standardisation of the model's space weight them very differently.
    mix    (1 - loss_mix) * model + loss_mix * image.
    image_fft  image + fft_loss_weight * the L1 distance of the real and imaginary parts of the
           decoded x0's 2-D FFT from the clean window's, at fft_loss_scales scales (the window,
           then halved by 2x2 averaging each time): the frequency loss of MIMO-UNet, DeepRFT
           and SFNet / FSNet (there 0.1 beside a pixel L1). An L1 on the spectrum weighs a
           frequency by its error's magnitude, not its square, so the faint high frequencies
           that an MSE lets a blurry estimate give up cost more.
    psnr   the negative PSNR of each window's decoded x0, in dB, averaged over the batch (the PSNR
           loss of NAFNet, Chen et al. 2022): -10 log10 of the window's MSE, i.e. its squared
           error weighted by 1 / that MSE. The image loss averages squared errors, so the windows
           with the most rain left (Rain100H's) dominate its gradient; this one counts every
           window's dB alike, as the benchmarks' mean PSNR over images does.
"""
import torch
import torch.nn.functional as F

from helpers.errors import ConfigError
from helpers.seeding import SampleGenerators, batch_generator, hash_seed

# The image loss is expressed in units of an RMS error of 0.1 (20 dB PSNR), so that its values
# are of the order of the model-space loss (gradient clipping and Adam's epsilon see similar
# magnitudes); 1 / IMAGE_UNIT^2 = 100.
IMAGE_UNIT = 0.1


def drop_condition(cond, p_uncond, generator):
    """With p_uncond > 0, replace the condition of that fraction of the batch by zeros: the
    unconditional model that classifier-free guidance needs. generator: one for the batch, or
    per-sample (helpers.seeding)."""
    if p_uncond <= 0:
        return cond
    u = batch_generator(generator, cond.shape[0], cond.device).rand()
    keep = u >= p_uncond
    return cond * keep.view(-1, *([1] * (cond.dim() - 1))).to(cond.dtype)


class DiffusionLoss:
    """Draw (t, noise), make the network's input, run the network; subclasses compare
    (per_element). `process` is a diffusion.Diffusion, Bridge or Regression."""

    name = ""

    def __init__(self, process, representation, p_uncond, seed):
        self.process, self.rep, self.p_uncond = process, representation, float(p_uncond)
        self.seed = int(seed)

    def generators(self, batch, generator=None):
        """One generator per sample on the batch's device, seeded by (seed, the sample's
        position in the run's stream), when the batch says where its samples are; else
        `generator`. Per-sample draws make a sample's noise independent of how the job is split
        into ranks and micro-batches. The positions stay on the host (TrainStep does not move
        them), so reading them costs no device sync."""
        pos = batch.get("position")
        if pos is None:
            return generator
        positions = pos.tolist()  # a host tensor: no device read
        if min(positions) < 0:  # windows from outside the training stream
            return generator
        return SampleGenerators([hash_seed("noise", self.seed, p) for p in positions],
                                batch["target"].device)

    def __call__(self, net, batch, generator=None):
        x0, cond = batch["target"], batch["cond"]
        gens = self.generators(batch, generator)
        own = getattr(self.process, "states", "clean") == "own"  # the sampler's own states
        t, noise, rows = self.process.draw_rows(x0, gens) if own else \
            (*self.process.draw(x0, gens), None)
        cond = drop_condition(cond, self.p_uncond, gens)
        start = None
        if self.process.needs_start:  # the rainy end: the encoding of the pair (rain, rain)
            with torch.autocast(x0.device.type, enabled=False):
                start = self.rep.encode(batch["rain"].float(), batch["rain"].float())[0]
        x_t = self.process.train_input(x0, start, t, noise)
        if own:
            x_t = self.process.own_states(net, x_t, start, t, cond, rows)
        pred = net(x_t, t, cond)
        return self.per_element(pred, batch, x_t, t, noise, start)

    def per_element(self, pred, batch, x_t, t, noise, start):
        raise NotImplementedError


class ModelLoss(DiffusionLoss):
    name = "model"

    def per_element(self, pred, batch, x_t, t, noise, start):
        target = self.process.train_target(batch["target"], t, noise)
        return (pred.float() - target.float()) ** 2


class ImageLoss(DiffusionLoss):
    name = "image"

    def decoded(self, pred, batch, x_t, t, start):
        """The network's x0 estimate decoded to the image (float32, outside autocast: FFTs in
        bf16 are not supported)."""
        with torch.autocast(pred.device.type, enabled=False):
            x0_hat = self.process.x0_estimate(pred.float(), x_t.float(), t, start)
            return self.rep.decode(x0_hat, batch["rain"].float())

    def per_element(self, pred, batch, x_t, t, noise, start):
        return (self.decoded(pred, batch, x_t, t, start) - batch["clean"].float()) ** 2 / \
            IMAGE_UNIT ** 2


def weighted_parts(parts):
    """[(weight, per-element tensor (B, ...)), ...] -> one (B, N) tensor whose mean is the
    weighted sum of the parts' means (the parts have different shapes)."""
    flat = [(w, x.flatten(1)) for w, x in parts]
    n = sum(x.shape[1] for _, x in flat)
    return torch.cat([w * x * (n / x.shape[1]) for w, x in flat], dim=1)


class MixLoss(DiffusionLoss):
    """(1 - mix) * model + mix * image, from one network call. The two parts have different
    shapes, so the per-element result is their concatenation, each part rescaled so that the mean
    of the concatenation is the weighted sum of the two means."""

    name = "mix"

    def __init__(self, process, representation, p_uncond, seed, mix):
        super().__init__(process, representation, p_uncond, seed)
        self.mix = float(mix)
        self.parts = (ModelLoss(process, representation, p_uncond, seed),
                      ImageLoss(process, representation, p_uncond, seed))

    def per_element(self, pred, batch, x_t, t, noise, start):
        m, i = (p.per_element(pred, batch, x_t, t, noise, start) for p in self.parts)
        return weighted_parts([(1 - self.mix, m), (self.mix, i)])


class ImageFFTLoss(ImageLoss):
    """The image loss plus an L1 on the spectrum of the decoded x0 at several scales (see the
    module docstring), in units of IMAGE_UNIT: a coefficient off by 0.1 costs 1."""

    name = "image_fft"

    def __init__(self, process, representation, p_uncond, seed, weight, scales):
        super().__init__(process, representation, p_uncond, seed)
        self.weight, self.scales = float(weight), int(scales)
        if self.scales < 1:
            raise ConfigError(f"--fft-loss-scales must be at least 1, got {scales}")

    def per_element(self, pred, batch, x_t, t, noise, start):
        image = self.decoded(pred, batch, x_t, t, start)
        clean = batch["clean"].float()
        parts = [(1.0, (image - clean) ** 2 / IMAGE_UNIT ** 2)]
        with torch.autocast(image.device.type, enabled=False):
            for k in range(self.scales):
                if k:  # the next scale: 2x2 means
                    image, clean = F.avg_pool2d(image, 2), F.avg_pool2d(clean, 2)
                d = torch.fft.rfft2(image - clean, norm="ortho")  # (B, 3, h, w // 2 + 1)
                parts.append((self.weight, torch.cat([d.real.abs(), d.imag.abs()], dim=1)
                              / IMAGE_UNIT))
        return weighted_parts(parts)


class PSNRLoss(ImageLoss):
    """The negative PSNR of each window's decoded x0 (dB against a peak of 1), one value per
    window, so the loop's mean is the batch's mean -PSNR: 10 log10(MSE + floor).

    The floor (an MSE; `--psnr-floor`) bounds the weight 1 / (MSE + floor) that a window's
    squared error gets. At its default, 1e-6 (60 dB), it only keeps an almost exact window from
    an unbounded weight and the loss is the PSNR loss. Raised towards the windows' own MSEs it
    moves the weighting back towards the image MSE: with a floor of 1e-3 (30 dB) a window at
    30 dB counts half as much, against one at 23 dB, as without it."""

    name = "psnr"

    def __init__(self, *args, floor=1e-6, **kw):
        super().__init__(*args, **kw)
        if not floor > 0:
            raise ConfigError(f"--psnr-floor must be > 0 (an MSE), got {floor!r}")
        self.floor = float(floor)

    def per_element(self, pred, batch, x_t, t, noise, start):
        err = self.decoded(pred, batch, x_t, t, start) - batch["clean"].float()
        mse = err.pow(2).flatten(1).mean(1, keepdim=True)  # (B, 1)
        return 10.0 * torch.log10(mse + self.floor)


LOSSES = {cls.name: cls for cls in (ModelLoss, ImageLoss, MixLoss, ImageFFTLoss, PSNRLoss)}


def make_loss(cfg, process, representation):
    """The loss named by cfg['loss'] (with cfg['p_uncond'] and, for mix, cfg['loss_mix'])."""
    name = cfg["loss"]
    if name not in LOSSES:
        raise ConfigError(f"unknown loss {name!r}; choose one of {', '.join(LOSSES)}")
    kw = {"mix": {"mix": cfg["loss_mix"]},
          "image_fft": {"weight": cfg["fft_loss_weight"], "scales": cfg["fft_loss_scales"]},
          "psnr": {"floor": cfg["psnr_floor"]}}.get(name, {})
    if name in ("model", "mix") and getattr(process, "parametrisation", "x0") != "x0":
        raise ConfigError(f"--loss {name} compares the network's output with x0, which the "
                          f"bridge's {process.parametrisation} parametrisation "
                          "does not output; use an image loss (psnr, image, image_fft) or add "
                          "--bridge-param x0")
    return LOSSES[name](process, representation, cfg["p_uncond"], cfg["seed"], **kw)
