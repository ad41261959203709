"""The networks: the conditional U-Net and the wrapper through which the diffusion calls it.

The network sees the noisy target ``x`` (B, C, H, W) (a normalised spectrum, or pixels), the
encoded rainy window ``cond`` (B, C, H, W) and the diffusion time ``t`` (B,), and predicts a
(B, C, H, W) tensor (the noise, or whatever the training objective asks for). ``build_network``
makes it for a config and a representation: the representation says how many channels there are
and which constant inputs the network also gets (``Denoiser``).

Design notes (why it looks the way it does):

* A convolution is translation-equivariant, but in a spectrum a coefficient's position *is* its
  frequency: low frequencies (centre) and high frequencies (border) behave very differently. With
  ``freq_coords=True`` the representation's constant channels (for a spectrum: fy, fx, radius of
  each coefficient's frequency) are concatenated to the input, so every layer can condition on
  where it is.
* Widths grow with depth (``base_channels * channel_mults[i]`` at level i, resolution H / 2**i).
  Parameters grow with width squared while FLOPs grow with width squared times pixels, so putting
  width at the low-resolution levels buys parameters (capacity) cheaply and keeping the
  full-resolution level narrow keeps the step fast and the activation memory small.
* Self-attention is quadratic in the number of pixels, so it is only allowed at down-sampled levels
  (``attn_levels`` holds level indices >= 1) and uses ``F.scaled_dot_product_attention`` (flash /
  memory-efficient kernels on GPU).
* Any input size works: the input is padded to a multiple of 2**(number of downsamples) and the
  output cropped back. Nothing depends on a fixed size, so torch.compile, bf16 autocast and
  channels_last work as usual.
* The last convolution is zero-initialised, so the untrained model predicts 0 (a standard trick
  that makes early diffusion training stable).

``self.config`` holds the U-Net's constructor arguments as a plain, JSON-able dict; a checkpoint
saves it next to the state_dict and ``build_network`` rebuilds the same architecture from it.
"""
import inspect
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from helpers.errors import ConfigError

# Architecture presets (only shape hyper-parameters: channel counts are task-specific and come
# from the representation, see build_network).
# All widths are multiples of 32 so GPU tensor cores / channels_last kernels stay efficient.
MODEL_PRESETS = {
    # ~2.5M parameters: a ~10-minute CPU training run on 64x64 crops.
    "small": dict(base_channels=32, channel_mults=(1, 2, 2, 4), num_res_blocks=1,
                  attn_levels=(3,), attn_heads=4, groups=8),
    # ~12M parameters: the middle ground; attention at 1/8 resolution (8x8 for 64x64 crops).
    "default": dict(base_channels=32, channel_mults=(1, 2, 4, 8), num_res_blocks=(1, 2, 2, 2),
                    attn_levels=(3,), attn_heads=8, groups=16),
    # ~26M parameters, almost all of them at 8x8 and 4x4 (for 64x64 crops) where FLOPs are cheap;
    # the full-resolution level is 32 channels wide with a single ResBlock, because there every
    # conv costs as much as a 256-channel conv at 8x8 and the activations dominate memory.
    "large": dict(base_channels=32, channel_mults=(1, 2, 4, 8, 10), num_res_blocks=(1, 2, 2, 2, 2),
                  attn_levels=(3, 4), attn_heads=8, groups=16),
}


def _num_groups(groups, channels):
    """GroupNorm group count: the largest divisor of ``channels`` that is <= ``groups``.

    Using a divisor (instead of requiring ``channels % groups == 0``) lets every width work, e.g. a
    48-channel layer with groups=32 gets 24 groups rather than an error.
    """
    g = max(1, min(groups, channels))
    while channels % g:
        g -= 1
    return g


def norm(groups, channels):
    """GroupNorm: batch-size independent (training batches are small) and fine with any size."""
    return nn.GroupNorm(_num_groups(groups, channels), channels, eps=1e-6)


def timestep_embedding(t, dim, max_period=10000.0):
    """Sinusoidal embedding of diffusion times ``t`` (B,) -> (B, dim).

    Half the channels are sin, half cos, at frequencies geometrically spaced between 1 and
    1/max_period, so both t=1 vs t=2 and t=100 vs t=900 are distinguishable. Computed in float32
    whatever the autocast dtype: bf16 cannot resolve t=999 vs t=1000.
    """
    half = dim // 2
    freqs = torch.exp(-math.log(max_period)
                      * torch.arange(half, device=t.device, dtype=torch.float32) / half)  # (half,)
    args = t.float()[:, None] * freqs[None, :]  # (B, half)
    emb = torch.cat([torch.sin(args), torch.cos(args)], dim=1)  # (B, 2*half)
    if dim % 2:  # odd dim: pad one zero channel so the output really has `dim` channels
        emb = F.pad(emb, (0, 1))
    return emb  # (B, dim)


class ResBlock(nn.Module):
    """GroupNorm -> SiLU -> conv3x3 -> GroupNorm -> time scale-shift -> SiLU -> dropout -> conv3x3,
    plus a (1x1 when widths differ) skip path.

    The time embedding modulates the normalised activations as ``h * (1 + scale) + shift``
    (FiLM / "scale-shift norm"): stronger conditioning than adding a bias, at the same cost.
    """

    def __init__(self, in_ch, out_ch, time_dim, groups, dropout=0.0, fft_branch="none"):
        super().__init__()
        self.norm1 = norm(groups, in_ch)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.time_proj = nn.Linear(time_dim, 2 * out_ch)  # -> (scale, shift)
        self.norm2 = norm(groups, out_ch)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        self.skip = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()
        self.fourier = make_fft_branch(fft_branch, out_ch)

    def forward(self, x, temb):
        # x: (B, Cin, H, W); temb: (B, T) already passed through SiLU
        h = self.conv1(F.silu(self.norm1(x)))  # (B, Cout, H, W)
        scale, shift = self.time_proj(temb)[:, :, None, None].chunk(2, dim=1)  # 2 x (B, Cout, 1, 1)
        h = self.dropout(F.silu(self.norm2(h) * (1 + scale) + shift))  # (B, Cout, H, W)
        out = self.conv2(h)  # (B, Cout, H, W)
        if self.fourier is not None:  # the global branch beside the local 3x3 one
            out = out + self.fourier(h)
        return self.skip(x) + out  # (B, Cout, H, W)


class FourierUnit(nn.Module):
    """The global branch of a Fast Fourier Convolution (Chi et al. 2020; ``fft_branch="ffc"``):
    a 1x1 convolution of the feature map's real FFT (real and imaginary parts as channels),
    transformed back, so every output pixel sees the whole map. On a spectrum input it is a
    convolution in image space."""

    def __init__(self, channels):
        super().__init__()
        self.conv = nn.Conv2d(2 * channels, 2 * channels, 1)

    def forward(self, h):
        size = h.shape[-2:]
        with torch.autocast(h.device.type, enabled=False):  # no FFTs in bf16
            f = torch.fft.rfft2(h.float(), norm="ortho")  # (B, C, H, W // 2 + 1) complex
            re, im = self.conv(torch.cat([f.real, f.imag], dim=1)).chunk(2, dim=1)
            out = torch.fft.irfft2(torch.complex(re, im), s=size, norm="ortho")
        return out.to(h.dtype)  # (B, C, H, W)


class ResFFT(nn.Module):
    """DeepRFT's Res-FFT-ReLU branch (Mao et al., AAAI 2023; ``fft_branch="res_fft"``): the
    feature map's real FFT, a 1x1 convolution of its real and imaginary parts, ReLU, a second 1x1
    convolution, the inverse FFT. The 1x1 convolutions mix channels at every frequency with the
    same weights, so nothing depends on the map's size and every output pixel sees the whole
    map. The FFT size is the map's: deraining cuts images into windows of the training crop, so
    at test time the branch sees the sizes it was trained on (the crop and its downsampled
    levels), as DeepRFT does. The last convolution starts at zero: at first the block is its
    spatial branch alone."""

    def __init__(self, channels):
        super().__init__()
        self.conv1 = nn.Conv2d(2 * channels, 2 * channels, 1)
        self.conv2 = nn.Conv2d(2 * channels, 2 * channels, 1)
        nn.init.zeros_(self.conv2.weight)
        nn.init.zeros_(self.conv2.bias)

    def forward(self, h):
        size = h.shape[-2:]
        with torch.autocast(h.device.type, enabled=False):  # no FFTs in bf16
            f = torch.fft.rfft2(h.float(), norm="ortho")  # (B, C, H, W // 2 + 1) complex
            z = self.conv2(F.relu(self.conv1(torch.cat([f.real, f.imag], dim=1))))
            re, im = z.chunk(2, dim=1)
            out = torch.fft.irfft2(torch.complex(re, im), s=size, norm="ortho")
        return out.to(h.dtype)  # (B, C, H, W)


class ResConv(nn.Module):
    """The control for ResFFT (``fft_branch="res_conv"``): the same kind of branch with no FFT,
    a 1x1 convolution to 4c channels, ReLU, a 1x1 convolution back to c, on the feature map
    itself. It has ResFFT's weights to within the biases (8c^2: ResFFT's two convolutions act
    on 2c channels, the real and imaginary parts) and its nonlinearity, but sees one pixel, so
    beside ResFFT at equal steps it says whether a gain is the spectrum's global view or the
    added capacity. The last convolution starts at zero, as ResFFT's."""

    def __init__(self, channels):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, 4 * channels, 1)
        self.conv2 = nn.Conv2d(4 * channels, channels, 1)
        nn.init.zeros_(self.conv2.weight)
        nn.init.zeros_(self.conv2.bias)

    def forward(self, h):
        return self.conv2(F.relu(self.conv1(h)))  # (B, C, H, W)


class GlobalFilter(nn.Module):
    """A depthwise convolution whose kernel spans the whole window, applied in the frequency
    domain (``fft_branch="global_filter"``; the global filter layer of GFNet, Rao et al., NeurIPS
    2021): the feature map's real FFT times one learned complex weight per channel and
    frequency, then the inverse FFT. Unlike ResFFT, whose 1x1 convolutions treat every frequency
    alike, the weights differ per frequency, so the branch can pass or stop a band or an
    orientation (rain streaks put their energy on a line through the spectrum's centre,
    perpendicular to them). The weights are held at the size the block sees in training (the
    training window at its level, ``size``); derain.py cuts images into windows of that size, so
    at derain time the FFT size matches exactly. A map of another size gets the weights
    resampled bilinearly over the centred frequency grid (an approximation, only for calls
    outside derain.py's windows). The weights start at zero: at first the block is as without
    the branch."""

    def __init__(self, channels, size):
        super().__init__()
        h, w = int(size[0]), int(size[1])
        self.size = (h, w)
        # 3-D, so that a channels_last model leaves their layout alone
        self.real = nn.Parameter(torch.zeros(channels, h, w // 2 + 1))
        self.imag = nn.Parameter(torch.zeros(channels, h, w // 2 + 1))

    def filter_for(self, h, w):
        """The complex weights (C, h, w // 2 + 1) for an (h, w) map."""
        if (h, w) == self.size:
            return torch.complex(self.real.float(), self.imag.float())
        weight = torch.stack([self.real, self.imag], dim=1).float()  # (C, 2, H, W // 2 + 1)
        centred = F.interpolate(torch.fft.fftshift(weight, dim=2), size=(h, w // 2 + 1),
                                mode="bilinear", align_corners=True)
        weight = torch.fft.ifftshift(centred, dim=2)
        return torch.complex(weight[:, 0], weight[:, 1])

    def forward(self, h):
        size = h.shape[-2:]
        with torch.autocast(h.device.type, enabled=False):  # no FFTs in bf16
            f = torch.fft.rfft2(h.float(), norm="ortho")  # (B, C, H, W // 2 + 1) complex
            out = torch.fft.irfft2(f * self.filter_for(*size), s=size, norm="ortho")
        return out.to(h.dtype)  # (B, C, H, W)


FFT_BRANCHES = {"none": None, "ffc": FourierUnit, "res_fft": ResFFT, "res_conv": ResConv}
# branches that need the map's size and sit inside the NAF block's spatial branch
SIZED_BRANCHES = {"global_filter": GlobalFilter}


def make_fft_branch(kind, channels):
    """The global Fourier branch a block gets beside its spatial one (None for "none")."""
    if kind not in FFT_BRANCHES:
        raise ConfigError(f"unknown FFT branch {kind!r}; choose {', '.join(FFT_BRANCHES)}")
    return FFT_BRANCHES[kind](channels) if FFT_BRANCHES[kind] else None


class AttnBlock(nn.Module):
    """Multi-head self-attention over all pixels of a (low-resolution) feature map, residual.

    Lets distant frequencies interact (e.g. the harmonics of a periodic rain pattern) which a few
    3x3 convolutions at low resolution could not. Uses ``F.scaled_dot_product_attention`` so the
    GPU picks a fused flash / memory-efficient kernel; the sequence length is H*W of whatever size
    arrives, nothing is fixed.
    """

    def __init__(self, channels, heads, groups):
        super().__init__()
        if channels % heads:
            raise ConfigError(f"attention width {channels} is not divisible by attn_heads={heads}")
        self.heads = heads
        self.norm = norm(groups, channels)
        # No bias: a key bias adds the same q.b to every logit of a query, which softmax cancels,
        # so it would be a dead parameter; value/query biases are covered by the norm's affine
        # shift and the projection's bias.
        self.qkv = nn.Conv2d(channels, 3 * channels, 1, bias=False)
        self.proj = nn.Conv2d(channels, channels, 1)

    def forward(self, x):
        b, c, h, w = x.shape
        qkv = self.qkv(self.norm(x))  # (B, 3C, H, W)
        # (B, 3, heads, d, HW) -> three (B, heads, HW, d); reshape copies if channels_last
        qkv = qkv.reshape(b, 3, self.heads, c // self.heads, h * w).transpose(-1, -2)
        q, k, v = qkv.unbind(dim=1)  # each (B, heads, HW, d)
        out = F.scaled_dot_product_attention(q, k, v)  # (B, heads, HW, d)
        out = out.transpose(-1, -2).reshape(b, c, h, w)  # (B, C, H, W)
        return x + self.proj(out)  # (B, C, H, W)


class Downsample(nn.Module):
    """Strided 3x3 conv: halves H and W and changes the width in one learned step."""

    def __init__(self, in_ch, out_ch):
        super().__init__()
        self.conv = nn.Conv2d(in_ch, out_ch, 3, stride=2, padding=1)

    def forward(self, x):
        return self.conv(x)  # (B, Cin, H, W) -> (B, Cout, H/2, W/2)


class Upsample(nn.Module):
    """Nearest-neighbour x2 then 3x3 conv (no transposed-conv checkerboard artefacts)."""

    def __init__(self, in_ch, out_ch):
        super().__init__()
        self.conv = nn.Conv2d(in_ch, out_ch, 3, padding=1)

    def forward(self, x):
        # explicit integer size, not scale_factor=2.0: a float scale turns the output size into
        # floor(h * 2.0), a symbolic float that torch.compile handles badly with dynamic shapes
        x = F.interpolate(x, size=(2 * x.shape[-2], 2 * x.shape[-1]), mode="nearest")
        return self.conv(x)  # (B, Cout, 2H, 2W)


class Level(nn.Module):
    """The blocks of one resolution level: ResBlocks, each optionally followed by attention."""

    def __init__(self, in_ch, out_ch, n_blocks, time_dim, groups, dropout, attn, heads,
                 fft_branch="none"):
        super().__init__()
        self.res = nn.ModuleList()
        self.attn = nn.ModuleList()
        for i in range(n_blocks):
            self.res.append(ResBlock(in_ch if i == 0 else out_ch, out_ch, time_dim, groups, dropout,
                                     fft_branch))
            self.attn.append(AttnBlock(out_ch, heads, groups) if attn else nn.Identity())

    def forward(self, x, temb):
        for res, attn in zip(self.res, self.attn):
            x = attn(res(x, temb))
        return x


class UNet_conditional(nn.Module):
    """Conditional diffusion U-Net: ``forward(x, t, cond) -> (B, out_channels, H, W)``.

    Args:
        in_channels: channels of the noisy input x (6 for spectra, 3 for the pixel baseline).
        cond_channels: channels of the condition, concatenated to x at the input (0 = none);
            with a Denoiser, the representation's extra inputs are part of the condition.
        out_channels: channels predicted.
        base_channels: width of the full-resolution level.
        channel_mults: width multiplier per level; level i works at resolution H / 2**i, so there
            are ``len(channel_mults) - 1`` downsamples.
        num_res_blocks: ResBlocks per level in the encoder and in the decoder: one int for all
            levels, or one int per level (e.g. fewer blocks at the expensive full resolution).
        attn_levels: level indices (>= 1) that get self-attention after each ResBlock; if it
            contains the deepest level the middle block gets attention too. Level 0 (full
            resolution) is refused: attention there costs (H*W)^2.
        attn_heads: heads of every attention block (the level width must be divisible by it).
        dropout: dropout inside ResBlocks.
        groups: maximum GroupNorm groups (the largest divisor of each width <= groups is used).
        fft_branch: every ResBlock gets a global Fourier branch beside its 3x3 convolution:
            "none", "ffc" (FourierUnit; the dual block of Fast Fourier Convolutions) or
            "res_fft" (ResFFT, DeepRFT's Res-FFT-ReLU).
    """

    # The shape comes from a preset of MODEL_PRESETS (build_network); dropout and the Fourier
    # branch are off unless asked for.
    def __init__(self, in_channels, cond_channels, out_channels, base_channels, channel_mults,
                 num_res_blocks, attn_levels, attn_heads, groups, dropout=0.0,
                 fft_branch="none"):
        super().__init__()
        channel_mults = tuple(int(m) for m in channel_mults)
        attn_levels = tuple(sorted({int(a) for a in attn_levels}))
        n_levels = len(channel_mults)
        if n_levels < 1:
            raise ConfigError("channel_mults needs at least one level")
        if isinstance(num_res_blocks, int):
            blocks = [num_res_blocks] * n_levels
            nrb_config = int(num_res_blocks)
        else:
            blocks = [int(n) for n in num_res_blocks]
            nrb_config = list(blocks)
            if len(blocks) != n_levels:
                raise ConfigError(f"num_res_blocks={num_res_blocks}: need one entry per level "
                                 f"({n_levels})")
        if min(blocks) < 1:
            raise ConfigError("num_res_blocks must be >= 1 at every level")
        if any(a < 1 or a >= n_levels for a in attn_levels):
            raise ConfigError(f"attn_levels={attn_levels}: must be level indices in 1..{n_levels - 1}"
                             " (no attention at full resolution, level 0)")
        # Plain JSON-able record of the constructor arguments (lists, not tuples, so a JSON round
        # trip gives back an identical dict).
        self.config = dict(in_channels=int(in_channels), cond_channels=int(cond_channels),
                           out_channels=int(out_channels), base_channels=int(base_channels),
                           channel_mults=list(channel_mults), num_res_blocks=nrb_config,
                           attn_levels=list(attn_levels), attn_heads=int(attn_heads),
                           dropout=float(dropout), groups=int(groups),
                           fft_branch=str(fft_branch))
        self.in_channels, self.cond_channels, self.out_channels = in_channels, cond_channels, out_channels
        self.n_down = n_levels - 1
        self.attn_levels = attn_levels
        widths = [base_channels * m for m in channel_mults]

        # time embedding: sinusoid of width base_channels -> MLP -> 4 * base_channels
        self.t_sin_dim = base_channels
        time_dim = 4 * base_channels
        self.time_mlp = nn.Sequential(nn.Linear(self.t_sin_dim, time_dim), nn.SiLU(),
                                      nn.Linear(time_dim, time_dim))

        n_in = in_channels + cond_channels
        self.conv_in = nn.Conv2d(n_in, widths[0], 3, padding=1)

        # Encoder: level i = blocks at width widths[i], then a downsample to widths[i + 1].
        self.down_levels = nn.ModuleList()
        self.downsamples = nn.ModuleList()
        for i, w in enumerate(widths):
            self.down_levels.append(Level(w, w, blocks[i], time_dim, groups, dropout,
                                          i in attn_levels, attn_heads, fft_branch))
            if i < self.n_down:
                self.downsamples.append(Downsample(w, widths[i + 1]))

        # Middle (deepest resolution): res -> (attn) -> res.
        deep = widths[-1]
        self.mid1 = ResBlock(deep, deep, time_dim, groups, dropout, fft_branch)
        self.mid_attn = (AttnBlock(deep, attn_heads, groups) if self.n_down in attn_levels
                         else nn.Identity())
        self.mid2 = ResBlock(deep, deep, time_dim, groups, dropout, fft_branch)

        # Decoder: mirror of the encoder. Level i takes [upsampled deeper features, encoder skip]
        # concatenated (2 * widths[i] channels) and returns widths[i].
        self.up_levels = nn.ModuleList()
        self.upsamples = nn.ModuleList()
        for i, w in enumerate(widths):
            self.up_levels.append(Level(2 * w, w, blocks[i], time_dim, groups, dropout,
                                        i in attn_levels, attn_heads, fft_branch))
            if i < self.n_down:
                self.upsamples.append(Upsample(widths[i + 1], w))

        self.norm_out = norm(groups, widths[0])
        self.conv_out = nn.Conv2d(widths[0], out_channels, 3, padding=1)
        # Zero init: the untrained model outputs exactly 0, so the first steps do not fight a
        # random output and the residual stack starts close to identity.
        nn.init.zeros_(self.conv_out.weight)
        nn.init.zeros_(self.conv_out.bias)

    def forward(self, x, t, cond=None):
        """x: (B, in_channels, H, W); t: (B,) or scalar, int or float; cond: (B, cond_channels, H, W)
        -> (B, out_channels, H, W)."""
        b, _, h, w = x.shape
        if not torch.is_tensor(t):
            t = torch.tensor(t, device=x.device)
        if t.dim() == 0:
            t = t.expand(b)
        temb = self.time_mlp(timestep_embedding(t.to(x.device), self.t_sin_dim))  # (B, T)
        temb = F.silu(temb)  # every consumer applies SiLU first, so do it once here

        parts = [x]
        if self.cond_channels:
            if cond is None:
                raise ValueError("this model was built with cond_channels > 0: pass cond")
            parts.append(cond.to(x.dtype))
        h0 = torch.cat(parts, dim=1)  # (B, Cin + Ccond, H, W)

        # Pad to a multiple of 2**n_down so every downsample halves exactly and the skips line up.
        # Split between both sides so the zero-frequency pixel stays near the middle; zeros (not
        # reflect) because reflect fails when the pad exceeds a tiny input.
        # (ceil-division rather than `(-h) % m`: the modulo of a symbolic size trips some
        # torch.compile versions' dynamic-shape lowering, floor division does not)
        m = 2 ** self.n_down
        ph, pw = (h + m - 1) // m * m - h, (w + m - 1) // m * m - w
        top, left = ph // 2, pw // 2
        if ph or pw:
            h0 = F.pad(h0, (left, pw - left, top, ph - top))  # (B, C, H', W')

        hcur = self.conv_in(h0)  # (B, w0, H', W')
        skips = []
        for i, level in enumerate(self.down_levels):
            hcur = level(hcur, temb)  # (B, w_i, H'/2^i, W'/2^i)
            if i < self.n_down:
                skips.append(hcur)
                hcur = self.downsamples[i](hcur)  # (B, w_{i+1}, H'/2^(i+1), W'/2^(i+1))
        skips.append(hcur)  # the deepest level's output is the deepest decoder level's skip

        hcur = self.mid2(self.mid_attn(self.mid1(hcur, temb)), temb)  # (B, w_last, ., .)

        for i in reversed(range(len(self.up_levels))):
            hcur = torch.cat([hcur, skips[i]], dim=1)  # (B, 2 w_i, ., .)
            hcur = self.up_levels[i](hcur, temb)  # (B, w_i, ., .)
            if i > 0:
                hcur = self.upsamples[i - 1](hcur)  # (B, w_{i-1}, 2x, 2x)

        out = self.conv_out(F.silu(self.norm_out(hcur)))  # (B, out, H', W')
        return out[:, :, top:top + h, left:left + w]  # crop back: (B, out_channels, H, W)


def count_parameters(model):
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


# Bound on the decoded change a PixelTrunk network sees: a noisy spectral state can decode to
# any value (through the signed log above all); real changes clean - rain lie in [-1, 1].
TRUNK_CLAMP = 2.0


class Denoiser(nn.Module):
    """The network as the diffusion calls it: ``model(x_t, t, cond) -> prediction``.

    Appends the representation's constant input channels of the *unpadded* size (for a spectrum
    the frequency coordinates; the U-Net's padding must not move the frequencies) to the
    condition and runs the trunk. It holds no parameters of its own."""

    def __init__(self, trunk, representation=None):
        super().__init__()
        self.trunk = trunk
        self.extra_inputs = representation.extra_inputs if representation is not None else None
        self.config = trunk.config

    def forward(self, x, t, cond):
        if self.extra_inputs is not None:
            extra = self.extra_inputs(*x.shape[-2:], device=x.device, dtype=x.dtype)
            cond = torch.cat([cond.to(x.dtype), extra.expand(x.shape[0], -1, -1, -1)], dim=1)
        return self.trunk(x, t, cond)


class PixelTrunk(nn.Module):
    """Spectrum in, spectrum out, pixels inside (``--network pixel_trunk``).

    The state x_t (the normalised Fourier target) and the condition are decoded to image space
    with the representation's own inverse: the rainy window and the change clean - rain that
    x_t stands for (noisy, bounded to +-TRUNK_CLAMP). A U-Net works on those pixels and predicts
    the change, which is encoded back into the representation's space: the x0 estimate of the
    Fourier target. The process, its noise and the loss stay in the Fourier domain; only the
    network's operator is spatial (3x3 convolutions over an image instead of over a spectrum).
    The output is an x0 estimate, so it needs --prediction x0 (or a bridge / regression)."""

    def __init__(self, trunk, representation):
        super().__init__()
        self.trunk, self.rep, self.config = trunk, representation, trunk.config

    def forward(self, x, t, cond):
        with torch.autocast(x.device.type, enabled=False):
            rain = self.rep.cond_to_image(cond.float())  # (B, 3, h, w)
            change = (self.rep.decode(x.float(), rain) - rain).clamp(-TRUNK_CLAMP, TRUNK_CLAMP)
        out = self.trunk(torch.cat([change, 2 * rain - 1], dim=1).to(x.dtype), t)  # (B, 3, h, w)
        with torch.autocast(x.device.type, enabled=False):
            return self.rep.encode(rain + out.float(), rain)[0].to(x.dtype)


# ============================================================================ NAFNet-style trunk
class LayerNorm2d(nn.Module):
    """LayerNorm over the channels of every pixel (NAFNet's normalisation)."""

    def __init__(self, channels, eps=1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(1, channels, 1, 1))
        self.bias = nn.Parameter(torch.zeros(1, channels, 1, 1))
        self.eps = eps

    def forward(self, x):
        mu = x.mean(1, keepdim=True)
        var = (x - mu).pow(2).mean(1, keepdim=True)
        return (x - mu) / (var + self.eps).sqrt() * self.weight + self.bias


class NAFBlock(nn.Module):
    """A block of a NAFNet (Chen et al., ECCV 2022), written from the paper: LayerNorm, 1x1
    expansion, depthwise 3x3, SimpleGate (one half of the channels times the other), simplified
    channel attention (a 1x1 convolution of the global mean), 1x1 projection; then a gated 1x1
    feed-forward part; both residuals scaled by learned per-channel factors that start at 0.
    The time embedding modulates the first normalisation (FiLM, as in the U-Net's ResBlock).
    With fft_branch, a global Fourier branch of the block's input is added beside the spatial
    one (the place DeepRFT gives it); "global_filter" instead adds a GlobalFilter of the
    normalised input to it before the expansion (so the filtered map goes through the 3x3 and
    the gate). size: the (H, W) of the maps the block sees in training (only for
    "global_filter")."""

    def __init__(self, c, time_dim, fft_branch="none", size=None):
        super().__init__()
        self.norm1, self.norm2 = LayerNorm2d(c), LayerNorm2d(c)
        self.time_proj = nn.Linear(time_dim, 2 * c)
        self.expand = nn.Conv2d(c, 2 * c, 1)
        self.depthwise = nn.Conv2d(2 * c, 2 * c, 3, padding=1, groups=2 * c)
        self.attention = nn.Conv2d(c, c, 1)  # on the global average: one weight per channel
        self.project = nn.Conv2d(c, c, 1)
        self.ffn_in, self.ffn_out = nn.Conv2d(c, 2 * c, 1), nn.Conv2d(c, c, 1)
        self.beta = nn.Parameter(torch.zeros(1, c, 1, 1))
        self.gamma = nn.Parameter(torch.zeros(1, c, 1, 1))
        self.global_filter = None
        if fft_branch in SIZED_BRANCHES:
            if size is None:
                raise ConfigError(f"the {fft_branch} branch needs the training window's size "
                                  "(NAFNet's window)")
            self.global_filter = SIZED_BRANCHES[fft_branch](c, size)
            fft_branch = "none"
        self.fourier = make_fft_branch(fft_branch, c)

    def forward(self, x, temb):
        # x: (B, C, H, W); temb: (B, T) after SiLU
        scale, shift = self.time_proj(temb)[:, :, None, None].chunk(2, dim=1)  # (B, C, 1, 1)
        h = self.norm1(x) * (1 + scale) + shift
        if self.global_filter is not None:
            h = h + self.global_filter(h)
        a, b = self.depthwise(self.expand(h)).chunk(2, dim=1)  # SimpleGate
        h = a * b  # (B, C, H, W)
        h = h * self.attention(h.mean(dim=(2, 3), keepdim=True))  # simplified channel attention
        y = x + self.project(h) * self.beta
        if self.fourier is not None:
            y = y + self.fourier(x)
        a, b = self.ffn_in(self.norm2(y)).chunk(2, dim=1)
        return y + self.ffn_out(a * b) * self.gamma  # (B, C, H, W)


def _levels(spec):
    """filter_levels as a sorted list of level indices (an int n: the outer n levels)."""
    if isinstance(spec, bool) or not isinstance(spec, (int, list, tuple)) or \
            any(isinstance(v, bool) or not isinstance(v, int) or v < 0
                for v in ([spec] if isinstance(spec, int) else spec)):
        raise ConfigError(f"filter_levels must be level indices (0 = full resolution) or a "
                          f"count of outer levels, got {spec!r}")
    return list(range(spec)) if isinstance(spec, int) else sorted({int(v) for v in spec})


class NAFNet(nn.Module):
    """A NAFNet-style encoder-decoder (``forward(x, t, cond=None) -> (B, out_channels, H, W)``),
    the trunk of ``--network naf`` / ``naf_fft``: a 3x3 convolution in, levels of NAFBlocks at
    widths width * 2**i, each halved in size by a strided 2x2 convolution, middle blocks, then
    pixel-shuffle upsampling with the encoder's output added back, and a 3x3 convolution out
    (started at zero: the untrained network predicts no change). Any size works: the input is
    padded to a multiple of 2**levels and the output cropped. window: the training window's
    side, which fft_branch="global_filter" sizes its weights by (None for the other branches;
    checkpoints from before it have none); filter_levels: the levels (0: full resolution; the
    middle is len(enc_blocks)) whose blocks, encoder and decoder, get the global filter, or an
    int n for the outer n. By default the outer two: there a stack of 3x3 convolutions sees
    least of the window (on the deeper maps, 8x8 and 4x4 for a 64-px window, a few already span
    it), and there its FFTs cost most (--model-args '{"filter_levels": [1]}' keeps the cheaper
    second level only)."""

    def __init__(self, in_channels, out_channels, width, enc_blocks, middle_blocks, dec_blocks,
                 fft_branch="none", cond_channels=0, window=None, filter_levels=(0, 1)):
        super().__init__()
        if len(enc_blocks) != len(dec_blocks):
            raise ConfigError(f"enc_blocks {enc_blocks} and dec_blocks {dec_blocks} need one "
                              "entry per level each")
        self.config = dict(in_channels=int(in_channels), out_channels=int(out_channels),
                           width=int(width), enc_blocks=[int(n) for n in enc_blocks],
                           middle_blocks=int(middle_blocks),
                           dec_blocks=[int(n) for n in dec_blocks], fft_branch=str(fft_branch),
                           cond_channels=int(cond_channels),
                           window=None if window is None else int(window),
                           filter_levels=_levels(filter_levels))
        self.in_channels, self.cond_channels = in_channels, cond_channels
        time_dim = 4 * width
        self.t_sin_dim = width
        self.time_mlp = nn.Sequential(nn.Linear(width, time_dim), nn.SiLU(),
                                      nn.Linear(time_dim, time_dim))
        self.conv_in = nn.Conv2d(in_channels + cond_channels, width, 3, padding=1)
        m = 2 ** len(enc_blocks)
        side = None if window is None else (int(window) + m - 1) // m * m  # as forward pads it

        def blocks(c, n, level):
            size = None if side is None else (side >> level, side >> level)
            branch = fft_branch
            if fft_branch in SIZED_BRANCHES and level not in self.config["filter_levels"]:
                branch = "none"
            return nn.ModuleList(NAFBlock(c, time_dim, branch, size) for _ in range(n))

        self.encoders, self.downs, self.ups, self.decoders = (nn.ModuleList() for _ in range(4))
        c = width
        for level, n in enumerate(enc_blocks):
            self.encoders.append(blocks(c, n, level))
            self.downs.append(nn.Conv2d(c, 2 * c, 2, stride=2))
            c *= 2
        self.middle = blocks(c, middle_blocks, len(enc_blocks))
        for k, n in enumerate(dec_blocks):  # the deepest level first
            self.ups.append(nn.Sequential(nn.Conv2d(c, 2 * c, 1), nn.PixelShuffle(2)))
            c //= 2
            self.decoders.append(blocks(c, n, len(dec_blocks) - 1 - k))
        self.conv_out = nn.Conv2d(width, out_channels, 3, padding=1)
        nn.init.zeros_(self.conv_out.weight)
        nn.init.zeros_(self.conv_out.bias)

    def forward(self, x, t, cond=None):
        b, _, h, w = x.shape
        if not torch.is_tensor(t):
            t = torch.tensor(t, device=x.device)
        if t.dim() == 0:
            t = t.expand(b)
        temb = F.silu(self.time_mlp(timestep_embedding(t.to(x.device), self.t_sin_dim)))
        if self.cond_channels:
            x = torch.cat([x, cond.to(x.dtype)], dim=1)
        m = 2 ** len(self.encoders)
        ph, pw = (h + m - 1) // m * m - h, (w + m - 1) // m * m - w
        top, left = ph // 2, pw // 2
        if ph or pw:
            x = F.pad(x, (left, pw - left, top, ph - top))
        z = self.conv_in(x)  # (B, width, H', W')
        skips = []
        for level, down in zip(self.encoders, self.downs):
            for block in level:
                z = block(z, temb)
            skips.append(z)
            z = down(z)  # (B, 2c, H/2, W/2)
        for block in self.middle:
            z = block(z, temb)
        for up, level, skip in zip(self.ups, self.decoders, reversed(skips)):
            z = up(z) + skip  # (B, c, 2H, 2W)
            for block in level:
                z = block(z, temb)
        out = self.conv_out(z)
        return out[:, :, top:top + h, left:left + w]  # (B, out_channels, H, W)


# The NAFNet-style trunk's sizes, under the same names as the U-Net's (--model). "large" keeps
# the CPU target of bench.py (a step of 8 64-px crops in at most 2 s and 2 GB on 2 cores: 0.96 s,
# 1.91 GB on 2026-12-03); the 12-middle-block, (2, 2, 4, 8) version took 2.28 GB.
NAF_PRESETS = {
    "small": dict(width=16, enc_blocks=(1, 1, 2, 4), middle_blocks=4, dec_blocks=(1, 1, 1, 1)),
    "default": dict(width=32, enc_blocks=(1, 1, 2, 4), middle_blocks=6, dec_blocks=(1, 1, 1, 1)),
    "large": dict(width=32, enc_blocks=(1, 1, 4, 6), middle_blocks=8, dec_blocks=(1, 1, 2, 2)),
}


# ============================================================================ the networks
# --network: (what the trunk works on, the trunk, the Fourier branch in every block). A trunk
# on "pixels" sits in a PixelTrunk (the state and the condition decoded to the image, its
# change out, encoded back: an x0 estimate); on "channels" in a Denoiser, over the
# representation's own channels (for a spectrum: 3x3 convolutions over the frequencies).
NETWORKS = {
    "unet": ("channels", "unet", "none"),
    "ffc": ("channels", "unet", "ffc"),
    "pixel_trunk": ("pixels", "unet", "none"),
    "pixel_trunk_fft": ("pixels", "unet", "res_fft"),
    "naf": ("pixels", "naf", "none"),
    "naf_fft": ("pixels", "naf", "res_fft"),
    "naf_conv": ("pixels", "naf", "res_conv"),  # naf_fft's control: the branch without the FFT
    "naf_gf": ("pixels", "naf", "global_filter"),  # a learned filter per frequency, outer levels
}
X0_NETWORKS = tuple(k for k, (space, _, _) in NETWORKS.items() if space == "pixels")
TRUNKS = {"unet": (UNet_conditional, MODEL_PRESETS), "naf": (NAFNet, NAF_PRESETS)}


def build_network(cfg, representation, trunk_config=None):
    """The network for a resolved config and its representation (cfg['network'], see
    NETWORKS). trunk_config: the trunk's arguments a checkpoint stored (default: the preset
    cfg['model'] of the trunk with cfg['model_args'])."""
    kind = cfg["network"]
    if kind not in NETWORKS:
        raise ConfigError(f"unknown network {kind!r}; choose {', '.join(NETWORKS)}")
    space, trunk_name, branch = NETWORKS[kind]
    trunk_class, presets = TRUNKS[trunk_name]
    if trunk_config is None:
        if cfg["model"] not in presets:
            raise ConfigError(f"unknown model {cfg['model']!r}; choose {', '.join(presets)}")
        c = representation.channels
        if space == "pixels":  # (change, rain) pixels in, the change out
            io = {"in_channels": 6, "cond_channels": 0, "out_channels": 3}
        else:
            extra = representation.extra_channels if cfg["freq_coords"] else 0
            io = {"in_channels": c, "cond_channels": c + extra, "out_channels": c}
        trunk_config = {**presets[cfg["model"]], **cfg["model_args"], **io, "fft_branch": branch}
        if "window" in inspect.signature(trunk_class).parameters:
            trunk_config["window"] = int(representation.crop)  # a global filter's FFT size
    unknown = set(trunk_config) - set(inspect.signature(trunk_class).parameters)
    if unknown:
        raise ConfigError(f"the {trunk_name} trunk takes no argument(s) {sorted(unknown)} "
                          "(--model-args)")
    trunk = trunk_class(**trunk_config)
    if space == "pixels":
        return PixelTrunk(trunk, representation)
    uses_extra = trunk.cond_channels > representation.channels
    return Denoiser(trunk, representation if uses_extra else None)
