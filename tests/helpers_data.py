"""Tiny paired datasets for tests (made on the fly, a few KB)."""
import numpy as np
from PIL import Image

import representations

from helpers.synth_rain import add_rain
from helpers.pairs import find_pairs, write_pairs_csv


# model_args of a tiny model of each trunk (modules.TRUNKS), for tests that train a few steps
TINY_MODELS = {"unet": {"base_channels": 16, "channel_mults": [1, 2], "num_res_blocks": 1,
                        "attn_levels": [1], "attn_heads": 2, "groups": 4},
               "naf": {"width": 8, "enc_blocks": [1, 1], "middle_blocks": 1, "dec_blocks": [1, 1]}}


def tiny_model_args(network=None):
    """model_args of a tiny model for `network`'s trunk (default: launch()'s network)."""
    import ddpm_conditional
    from modules import NETWORKS
    network = network or ddpm_conditional.launch()["network"]
    return dict(TINY_MODELS[NETWORKS[network][1]])


def smooth_image(rng, h, w):
    """A smooth colour image with some edges: low-frequency content rain is not."""
    y, x = np.mgrid[0:h, 0:w] / max(h, w)
    img = np.stack([0.5 + 0.4 * np.sin(2 * np.pi * (rng.random() * 2 * x + rng.random() * y) + c)
                    for c in (0, 2, 4)], -1)
    img[h // 3:h // 2, :] *= 0.6
    return np.clip(img * 255, 0, 255).astype(np.uint8)


def make_pairs(folder, n=6, size=(24, 28), seed=0):
    """n clean images with one rain variant each in input/ + target/; returns the CSV path."""
    rng = np.random.default_rng(seed)
    (folder / "input").mkdir(parents=True, exist_ok=True)
    (folder / "target").mkdir(parents=True, exist_ok=True)
    for i in range(n):
        clean = smooth_image(rng, *size)
        rain = add_rain(clean, rng)
        Image.fromarray(clean).save(folder / "target" / f"{i + 1}.png")
        Image.fromarray(rain).save(folder / "input" / f"{i + 1}.png")
    csv = folder / "pairs.csv"
    write_pairs_csv(find_pairs(folder), csv)
    return csv


def make_rep(name, target="diff", norm="perfreq_std", crop=64, log=True, stats=None,
             norm_gamma=0.5, **options):
    """representations.make with the values these tests use unless they say otherwise (the
    library has no defaults: they are launch()'s); blockdct gets blocks of 8."""
    if "block" in representations.get_class(name).options:
        options.setdefault("block", 8)
    return representations.make(name, crop, log, target, norm, norm_gamma, stats, **options)
