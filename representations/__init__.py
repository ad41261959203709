"""The registry of representations: one class per file, chosen by name (`--representation`).

    rep = make("realimag", target="diff", norm="perfreq_std", crop=64, log=True, stats=stats)
    rep = from_state(ckpt["representation"])          # what a checkpoint stored

See base.py for the interface. Adding a representation: a file with its class, a line below.
"""
from representations.base import NORMS, TARGETS, Representation  # noqa: F401
from representations.blockdct import BlockDCT
from representations.magphase import MagPhase
from representations.pixels import Pixels
from representations.realimag import RealImag
from representations.rfft2 import Rfft2

REGISTRY = {cls.name: cls for cls in (RealImag, MagPhase, Rfft2, BlockDCT, Pixels)}


def names(statistics_only=False):
    """Registered names; with statistics_only, those that need dataset statistics."""
    return tuple(n for n, cls in REGISTRY.items() if cls.needs_statistics or not statistics_only)


def get_class(name):
    if name not in REGISTRY:
        raise ValueError(f"unknown representation {name!r}; choose one of {', '.join(REGISTRY)}")
    return REGISTRY[name]


def make(name, target="diff", norm="perfreq_std", crop=64, log=True, stats=None,
         norm_gamma=0.5, **options):
    return get_class(name)(target, norm, crop, log, stats, norm_gamma, **options)


def from_config(cfg, stats=None):
    """The representation a resolved config names (its own options read from the config)."""
    cls = get_class(cfg["representation"])
    return cls(cfg["target"], cfg["norm"], cfg["crop"], cfg["signed_log"], stats,
               cfg.get("norm_gamma", 0.5), **{k: cfg[k] for k in cls.options if k in cfg})


def from_state(state):
    return get_class(state["name"]).from_state(state)
