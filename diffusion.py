"""The generative processes (`--process`): schedules, noising, parameterisations, samplers.

Nothing here knows about data, files or the training loop (the losses are in losses.py). A
sampler is a plain function of (model, condition, steps, generator) returning the generated
target, in the model's normalised space; the representation turns it into an image.

    diffusion   Diffusion: from pure noise to the target (DDPM / DDIM), the original process.
                model(x_t, t, cond) -> the prediction named by `prediction`:
                "eps": the noise,  "x0": the clean target,  "v": sqrt(abar) eps - sqrt(1 - abar) x0
    bridge      Bridge: from the rainy input to the target, x_t = (1 - s) x0 + s start +
                noise sqrt(s (1 - s)) eps with s = (t + 1) / T; sampling starts at the rainy
                image itself (InDI / residual bridges), made for a few steps. Predicts x0.
    regression  Regression: no process; one forward pass from the rainy input predicts x0.

Every process offers the same few methods to the losses and to sampling: draw (t and noise for a
training batch), train_input (the network's input x_t), train_target (what it should output),
x0_estimate (its x0 from an output) and sample. `start` is the target that says "the clean image
is the rainy one" (the representation's encoding of the pair (rain, rain)): zero change for a
diff target.
"""
import math

import torch

from helpers.errors import ConfigError
from helpers.seeding import batch_generator

PREDICTIONS = ("eps", "x0", "v")
SCHEDULES = ("cosine", "linear")
SAMPLERS = ("ddim", "ddpm")  # a Diffusion's samplers (a bridge has its own, regression none)


def cosine_beta_schedule(timesteps, s=0.008):
    """Nichol & Dhariwal 2021: abar(t) = cos^2((t/T + s) / (1 + s) * pi/2), betas clipped at 0.999."""
    t = torch.linspace(0, timesteps, timesteps + 1, dtype=torch.float64) / timesteps
    abar = torch.cos((t + s) / (1 + s) * math.pi / 2) ** 2
    abar = abar / abar[0]
    return torch.clamp(1 - abar[1:] / abar[:-1], 0, 0.999)


def linear_beta_schedule(timesteps, beta_start=1e-4, beta_end=0.02):
    """Ho et al. 2020, scaled so any number of steps spans the same total noise as 1000."""
    scale = 1000 / timesteps
    return torch.linspace(beta_start * scale, beta_end * scale, timesteps, dtype=torch.float64)


def uniform_share_at_or_above(timesteps, t):
    """The fraction of t drawn uniformly from 0..timesteps-1 (draw_t_and_noise) that is >= t."""
    return min(max((timesteps - int(t)) / timesteps, 0.0), 1.0)


class Diffusion:
    """Holds the schedule (float64 on the CPU; gathered values are cast to the input's dtype)."""

    name = "diffusion"
    needs_start = False

    def __init__(self, timesteps, schedule, prediction, exponent=None):
        """exponent: None (one schedule for every coefficient), or a tensor broadcasting against
        a sample (e.g. (1, h, w)): coefficient f is noised as abar_t ** exponent_f, so one with
        an exponent below 1 keeps its signal longer (see make_process, --freq-schedule)."""
        if schedule not in SCHEDULES:
            raise ConfigError(f"unknown schedule {schedule!r}; choose {', '.join(SCHEDULES)}")
        if prediction not in PREDICTIONS:
            raise ConfigError(f"unknown prediction {prediction!r}; choose "
                              f"{', '.join(PREDICTIONS)}")
        self.timesteps, self.schedule, self.prediction = timesteps, schedule, prediction
        betas = (cosine_beta_schedule if schedule == "cosine" else linear_beta_schedule)(timesteps)
        self.betas = betas
        self.alphas_cumprod = torch.cumprod(1 - betas, dim=0)  # abar_t for t = 0..T-1
        self.exponent = None if exponent is None else torch.as_tensor(exponent, dtype=torch.float64)
        self._on_device = {}  # device -> (abar, exponent) there: copied once, not every step

    def _tables(self, device):
        if device not in self._on_device:
            self._on_device[device] = (
                self.alphas_cumprod.to(device),
                None if self.exponent is None else self.exponent.to(device))
        return self._on_device[device]

    def _abar(self, t, like):
        abar, exponent = self._tables(like.device)
        a = abar[t].to(like.dtype)
        a = a.view(-1, *([1] * (like.dim() - 1)))
        if exponent is not None:  # per coefficient: (B, 1, ..) ** (.., h, w)
            a = a ** exponent.to(like.dtype)
        return a

    def q_sample(self, x0, t, noise):
        """x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps."""
        a = self._abar(t, x0)
        return a.sqrt() * x0 + (1 - a).sqrt() * noise

    def target_for(self, x0, t, noise):
        """What the network is trained to output for this (x0, t, noise)."""
        if self.prediction == "eps":
            return noise
        if self.prediction == "x0":
            return x0
        a = self._abar(t, x0)
        return a.sqrt() * noise - (1 - a).sqrt() * x0

    def split(self, out, x_t, t):
        """Network output at x_t -> (x0 estimate, eps estimate)."""
        a = self._abar(t, x_t)
        if self.prediction == "eps":
            eps = out
            x0 = (x_t - (1 - a).sqrt() * eps) / a.sqrt()
        elif self.prediction == "x0":
            x0 = out
            eps = (x_t - a.sqrt() * x0) / (1 - a).sqrt()
        else:
            x0 = a.sqrt() * x_t - (1 - a).sqrt() * out
            eps = (1 - a).sqrt() * x_t + a.sqrt() * out
        return x0, eps

    # ------------------------------------------------------------ the process interface
    def draw(self, x0, generator=None):
        return draw_t_and_noise(x0, self.timesteps, generator)

    def share_at_or_above(self, t):
        """The fraction of training draws (`draw`) at timestep t or later: uniform."""
        return uniform_share_at_or_above(self.timesteps, t)

    def train_input(self, x0, start, t, noise):
        return self.q_sample(x0, t, noise)

    def train_target(self, x0, t, noise):
        return self.target_for(x0, t, noise)

    def x0_estimate(self, out, x_t, t, start=None):
        return self.split(out, x_t, t)[0]

    def sample(self, model, cond, start, sampler, steps, eta, guidance, generator=None, clip=None,
               x_T=None, hook=None):
        if sampler == "ddim":
            return ddim_sample(model, cond, self, steps, eta, guidance, generator, clip, x_T, hook)
        if sampler == "ddpm":
            return ddpm_sample(model, cond, self, steps, guidance, generator, clip, x_T, hook)
        raise ConfigError(f"unknown sampler {sampler!r}; choose {', '.join(SAMPLERS)}")


class _PredictsX0:
    """A process that starts from the rainy input and whose network predicts x0 itself."""

    needs_start = True
    prediction = "x0"
    parametrisation = "x0"

    def train_target(self, x0, t, noise):
        return x0

    def x0_estimate(self, out, x_t, t, start=None):
        return out


class Bridge(_PredictsX0):
    """From the rainy input to the clean target: x_t = (1 - s_t) x0 + s_t start +
    noise sqrt(s_t (1 - s_t)) eps, s_t = (t + 1) / T, so x_{T-1} is the rainy input itself and
    x_0 is within 1/T of the target. The network predicts x0. Sampling (deterministic with
    eta = 0) starts at `start` and moves towards each x0 estimate along the bridge, keeping the
    implied noise (the DDIM idea on a bridge); eta > 0 redraws that fraction of it.

    Training draws t uniformly, or with `end` > 0 puts that fraction of the draws at t = T-1,
    where the input is the rainy image itself: the task the first sampling step solves, and the
    hardest one (uniform draws land there once in T; tools/loss_by_t.py shows how much easier
    the rest are).

    `parametrisation` (--bridge-param) says what the network's output F is:
        x0    the x0 estimate itself;
        skip  a correction to the inversion that ignores the noise: x0 = x_t - s start + s F,
              i.e. (1 - s) (x_t - s start) / (1 - s) + s F. At the rainy end (s = 1) that is F,
              the same task as with x0; towards the clean end the estimate becomes the state
              itself, nearly exact there (the inversion's error is the noise, 0.1 sqrt(s (1 - s))
              per element), so later sampling steps start from what the earlier ones gave
              instead of the network's answer to a task it was rarely trained on (a skip
              connection weighted by t, as EDM's c_skip and c_out).

    `states` (--bridge-states) says what the training draws below the rainy end (t < T-1) are
    built from:
        clean  the clean target: (1 - s) x0 + s start + noise (train_input), the textbook bridge;
        own    the network's own first estimate x0^ = F(start, T-1) (current weights, no
               gradient): (1 - s) x0^ + s start, with no noise, which is exactly the state the
               deterministic sampler (eta = 0) gives its second step. The target stays the clean
               x0, so those draws teach the step to correct the first estimate (training on the
               sampler's own states) instead of denoising a state built from the answer, a task
               the sampler never poses (tools/loss_by_t.py). The draws at T-1 are unchanged.
               Costs one forward pass without gradient on the draws below the end only (on an
               accelerator those the host chose not to send to the end: draw_rows).
    """

    name = "bridge"
    PARAMETRISATIONS = ("x0", "skip")
    STATES = ("clean", "own")

    def __init__(self, timesteps, noise, end, parametrisation, states="clean"):
        self.timesteps, self.noise, self.end = int(timesteps), float(noise), float(end)
        if not 0 <= self.end <= 1:
            raise ConfigError(f"--bridge-end is a fraction in [0, 1], got {end}")
        if parametrisation not in self.PARAMETRISATIONS:
            raise ConfigError(f"unknown --bridge-param {parametrisation!r}; choose "
                              f"{', '.join(self.PARAMETRISATIONS)}")
        if states not in self.STATES:
            raise ConfigError(f"unknown --bridge-states {states!r}; choose "
                              f"{', '.join(self.STATES)}")
        self.parametrisation, self.states = parametrisation, states

    def x0_estimate(self, out, x_t, t, start=None):
        if self.parametrisation == "x0":
            return out
        s = self.start_weight(t, x_t)
        return x_t - s * start + s * out

    def start_weight(self, t, like):
        """s_t = (t + 1) / T, the weight of the rainy start in x_t, shaped to broadcast over
        `like`."""
        s = (t.to(like.dtype) + 1) / self.timesteps
        return s.view(-1, *([1] * (like.dim() - 1)))

    def noiseless_x0(self, x_t, start, t):
        """The x0 that x_t implies if its noise is ignored, (x_t - s start) / (1 - s); None where
        some t is T-1 (s = 1: x_t is the start and says nothing about x0). Where it is already
        close to x0, the task at t is nearly trivial (tools/loss_by_t.py)."""
        s = self.start_weight(t, x_t)
        if float(s.max()) >= 1:
            return None
        return (x_t - s * start) / (1 - s)

    def share_at_or_above(self, t):
        """The fraction of training draws (`draw`) at timestep t or later: `end` of them at
        T - 1, the rest uniform."""
        if int(t) >= self.timesteps:
            return 0.0
        return self.end + (1 - self.end) * uniform_share_at_or_above(self.timesteps, t)

    def draw(self, x0, generator=None):
        return self.draw_rows(x0, generator)[:2]

    def draw_rows(self, x0, generator=None, host=None):
        """(t, noise, rows): draw() and the batch positions of the draws not sent to the rainy
        end, for own_states. On the CPU rows is None (own_states reads t there, for free) and
        the draws are draw()'s. Elsewhere, with `end` > 0, the end's uniform draws are made on
        the host (helpers.seeding's host_uniforms), so the host knows which draws they are and
        how many, and the network's extra pass runs on those rows only without reading the
        device; the one upload (B integers) does not wait for the device. The pass's batch
        varies from step to step (with --compile: a recompile or two until torch marks that
        dimension dynamic). `host` forces the host's draws (True) or the CPU's (False); by
        default the host's off the CPU."""
        t, noise = draw_t_and_noise(x0, self.timesteps, generator)
        if self.end <= 0:
            return t, noise, None
        gens = batch_generator(generator, x0.shape[0], x0.device)
        if host is None:
            host = x0.device.type != "cpu"
        if not host:  # drawn after (t, noise), so end = 0 draws exactly what it always did
            t = torch.where(gens.rand() < self.end, torch.full_like(t, self.timesteps - 1), t)
            return t, noise, None
        at_end = [u < self.end for u in gens.host_uniforms()]
        kept = [i for i, e in enumerate(at_end) if not e]
        order = torch.tensor(kept + [i for i, e in enumerate(at_end) if e])
        order = order.to(x0.device, non_blocking=True)
        return t.index_fill(0, order[len(kept):], self.timesteps - 1), noise, order[:len(kept)]

    def _sigma(self, s):
        return self.noise * (s * (1 - s)).clamp(min=0).sqrt()

    def train_input(self, x0, start, t, noise):
        s = self.start_weight(t, x0)
        return (1 - s) * x0 + s * start + self._sigma(s) * noise

    @torch.no_grad()
    def own_states(self, net, x_t, start, t, cond, rows=None, select=None):
        """--bridge-states own: x_t with every draw below the rainy end replaced by
        (1 - s) x0^ + s start, x0^ the network's estimate from the rainy input (no gradient).
        The network runs on the draws that `select` names:
            "t"     those with t < T-1, picked by reading t (the default on the CPU, where
                    reading is free);
            "rows"  the batch positions `rows` (draw_rows': those not sent to the rainy end,
                    whose count the host knows; the default elsewhere when rows are given). A
                    uniform draw that lands at T-1 is among them and is rebuilt as itself
                    (s = 1: the state is the start);
            "all"   the whole batch, then masked (the default elsewhere without rows)."""
        if select is None:
            select = "t" if x_t.device.type == "cpu" else "rows" if rows is not None else "all"
        if select not in ("t", "rows", "all"):
            raise ValueError(f"select is t, rows or all, got {select!r}")
        below = t < self.timesteps - 1
        if select == "all":
            idx = slice(None)
        else:
            idx = below.nonzero().flatten() if select == "t" else rows
            if idx.numel() == 0:  # the count is the host's (t on the CPU, or rows' shape)
                return x_t
        end = torch.full_like(t[idx], self.timesteps - 1)
        x0_hat = self.x0_estimate(net(start[idx], end, cond[idx]).to(x_t.dtype),
                                  start[idx], end, start[idx])
        s = self.start_weight(t[idx], x_t)
        own = (1 - s) * x0_hat + s * start[idx]
        if select == "all":
            return torch.where(below.view(-1, *([1] * (x_t.dim() - 1))), own, x_t)
        return x_t.index_copy(0, idx, own.to(x_t.dtype))

    @torch.no_grad()
    def sample(self, model, cond, start, sampler, steps, eta, guidance, generator=None, clip=None,
               x_T=None, hook=None):
        if start is None:
            raise TypeError("the bridge starts from the rainy input: pass start")
        x = start.to(cond.dtype)
        ts = _timesteps(self, steps)
        for i, t_now in enumerate(ts):
            t = torch.full((cond.shape[0],), t_now, device=cond.device, dtype=torch.long)
            out = _guided(model, x, t, cond, guidance).to(x.dtype)
            x0 = _bounded(self.x0_estimate(out, x, t, start), clip, hook, t_now)
            if i == len(ts) - 1:
                return x0
            s, s_next = self.start_weight(t, x), self.start_weight(torch.full_like(t, ts[i + 1]), x)
            sig, sig_next = self._sigma(s), self._sigma(s_next)
            eps = torch.where(sig > 0, (x - (1 - s) * x0 - s * start) / sig.clamp(min=1e-12),
                              torch.zeros_like(x))
            if eta > 0:
                fresh = _randn_like(generator, x)
                eps = (1 - eta ** 2) ** 0.5 * eps + eta * fresh
            x = (1 - s_next) * x0 + s_next * start + sig_next * eps
        return x


class Regression(_PredictsX0):
    """No generative process: one forward pass from the rainy input (x = start, t = 0) predicts
    x0. The plain regression network every diffusion result is read against."""

    name = "regression"
    timesteps = 1

    def draw(self, x0, generator=None):
        return torch.zeros(x0.shape[0], dtype=torch.long, device=x0.device), None

    def train_input(self, x0, start, t, noise):
        return start

    @torch.no_grad()
    def sample(self, model, cond, start, sampler, steps, eta, guidance, generator=None, clip=None,
               x_T=None, hook=None):
        t = torch.zeros(cond.shape[0], device=cond.device, dtype=torch.long)
        x0 = model(start.to(cond.dtype), t, cond).to(cond.dtype)
        return x0.clamp(-clip, clip) if clip else x0


PROCESSES = ("diffusion", "bridge", "regression")


def draw_t_and_noise(x0, timesteps, generator=None):
    """(t, noise) for a training batch, t first: from a torch.Generator (or None) for the whole
    batch, or from helpers.seeding.SampleGenerators, one stream per sample (then a sample's
    draws do not depend on the batch it is in)."""
    noise = batch_generator(generator, x0.shape[0], x0.device)
    return noise.randint(timesteps), noise.randn(x0.shape[1:])


def _randn_like(generator, x):
    """Noise shaped like the batch x from `generator` (one for the batch, per sample, or None)."""
    return batch_generator(generator, x.shape[0], x.device).randn(x.shape[1:], dtype=x.dtype)


def frequency_exponent(representation, strength):
    """Per-coefficient schedule exponents that noise low frequencies last: 1 - strength (1 - r)
    for a coefficient at normalised frequency radius r in [0, 1] (the representation's third
    extra input), so the zero frequency follows abar ** (1 - strength) and the highest abar.
    None for strength 0."""
    if not strength:
        return None
    if not 0 < strength < 1:
        raise ConfigError(f"--freq-schedule must be in [0, 1), got {strength}")
    c, h, w = representation.shape(representation.crop, representation.crop)
    extra = representation.extra_inputs(h, w, dtype=torch.float64)
    if extra is None or extra.shape[0] < 3:
        raise ConfigError(f"--freq-schedule needs a spectrum with frequency coordinates; the "
                          f"{representation.name} representation has none")
    return (1 - strength * (1 - extra[2]))[None]  # (1, h, w)


def make_process(cfg, representation):
    """The process named by cfg['process'] with its settings (cfg['freq_schedule'] needs the
    representation)."""
    name = cfg["process"]
    if name == "diffusion":
        strength = cfg["freq_schedule"]
        return Diffusion(cfg["timesteps"], cfg["schedule"], cfg["prediction"],
                         frequency_exponent(representation, strength) if strength else None)
    if name == "bridge":
        return Bridge(cfg["timesteps"], cfg["bridge_noise"], cfg["bridge_end"],
                      cfg["bridge_param"], cfg["bridge_states"])
    if name == "regression":
        return Regression()
    raise ConfigError(f"unknown process {name!r}; choose one of {', '.join(PROCESSES)}")


def _guided(model, x, t, cond, guidance):
    """Classifier-free guidance: uncond + w (cond - uncond); w = 1 is the plain conditional model
    and costs one forward pass."""
    if guidance == 1.0:
        return model(x, t, cond)
    out = model(torch.cat([x, x]), torch.cat([t, t]), torch.cat([cond, torch.zeros_like(cond)]))
    c, u = out.chunk(2)
    return u + guidance * (c - u)


def _bounded(x0, clip, hook, t_now):
    """An x0 estimate bounded to [-clip, clip] (clip None or 0: not), then passed through
    hook(x0, t) when there is one."""
    if clip:
        x0 = x0.clamp(-clip, clip)
    return hook(x0, t_now) if hook is not None else x0


def _timesteps(diffusion, steps):
    """`steps` timesteps evenly spaced over [0, T-1], descending, always ending at 0: host
    integers (round half to even), computed without a tensor."""
    last, steps = diffusion.timesteps - 1, max(1, min(int(steps), diffusion.timesteps))
    if steps == 1:
        return [last]
    ts = [round(last * (steps - 1 - i) / (steps - 1)) for i in range(steps)]
    return [t for i, t in enumerate(ts) if i == 0 or t != ts[i - 1]]


@torch.no_grad()
def ddim_sample(model, cond, diffusion, steps, eta, guidance, generator=None, clip=None,
                x_T=None, hook=None):
    """DDIM (Song et al. 2021) with `steps` network evaluations; eta = 0 is deterministic given
    the initial noise, eta = 1 matches DDPM's variance. Returns x0 with the shape of `cond`'s
    batch and the model's channels (taken from cond). clip: bound the x0 estimate to [-c, c].
    x_T: the initial noise (default: drawn from `generator`). hook(x0, t): replaces each x0
    estimate (e.g. windows of one image made to agree), the noise estimate follows it."""
    x = _initial(cond, generator, x_T)
    ts = _timesteps(diffusion, steps)
    for i, t_now in enumerate(ts):
        t = torch.full((cond.shape[0],), t_now, device=cond.device, dtype=torch.long)
        x0, eps = diffusion.split(_guided(model, x, t, cond, guidance).to(x.dtype), x, t)
        if clip or hook is not None:
            x0 = _bounded(x0, clip, hook, t_now)
            eps = (x - diffusion._abar(t, x).sqrt() * x0) / (1 - diffusion._abar(t, x)).sqrt()
        if i == len(ts) - 1:
            x = x0
            break
        a_now = diffusion._abar(t, x)
        a_next = diffusion._abar(torch.full_like(t, ts[i + 1]), x)
        sigma = eta * ((1 - a_next) / (1 - a_now) * (1 - a_now / a_next)).clamp(min=0).sqrt()
        x = a_next.sqrt() * x0 + (1 - a_next - sigma ** 2).clamp(min=0).sqrt() * eps
        if eta > 0:  # eta = 0 draws nothing: deterministic given x_T
            x = x + sigma * _randn_like(generator, x)
    return x


@torch.no_grad()
def ddpm_sample(model, cond, diffusion, steps, guidance, generator=None, clip=None, x_T=None,
                hook=None):
    """Ancestral sampling (Ho et al. 2020). With steps < T the same posterior is taken between
    the strided timesteps (the respacing of Nichol & Dhariwal 2021)."""
    x = _initial(cond, generator, x_T)
    ts = _timesteps(diffusion, steps)
    for i, t_now in enumerate(ts):
        t = torch.full((cond.shape[0],), t_now, device=cond.device, dtype=torch.long)
        x0, _ = diffusion.split(_guided(model, x, t, cond, guidance).to(x.dtype), x, t)
        x0 = _bounded(x0, clip, hook, t_now)
        if i == len(ts) - 1:
            return x0
        a_t = diffusion._abar(t, x)
        a_prev = diffusion._abar(torch.full_like(t, ts[i + 1]), x)
        beta = 1 - a_t / a_prev  # the effective beta between the two strided steps
        mean = (a_prev.sqrt() * beta / (1 - a_t)) * x0 + ((a_t / a_prev).sqrt() * (1 - a_prev)
                                                           / (1 - a_t)) * x
        var = beta * (1 - a_prev) / (1 - a_t)
        noise = _randn_like(generator, x)
        x = mean + var.sqrt() * noise
    return x


def _initial(cond, generator, x_T):
    if x_T is not None:
        return x_T.to(device=cond.device, dtype=cond.dtype)
    return _randn_like(generator, cond)


def sample(model, cond, process, sampler, steps, eta, guidance, generator=None, clip=None,
           x_T=None, start=None, hook=None):
    """Sample with any process (Diffusion: ddim or ddpm by name; Bridge; Regression)."""
    return process.sample(model, cond, start, sampler, steps, eta, guidance, generator, clip,
                          x_T, hook)
