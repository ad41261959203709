"""The registry of representations: one class per file, chosen by name (`--representation`).

    rep = from_config(cfg, stats)                       # what a resolved config names
    rep = make_transform("realimag", crop=64, log=False)  # transform only (statistics)
    rep = from_state(ckpt["representation"])          # what a checkpoint stored

See base.py for the interface. Adding a representation: a file with its class, a line below.
"""
from helpers.errors import ConfigError
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
        raise ConfigError(f"unknown representation {name!r}; choose one of {', '.join(REGISTRY)}")
    return REGISTRY[name]


def make(name, crop, log, target=None, norm=None, norm_gamma=None, stats=None, **options):
    """A representation by name (the arguments of Representation, base.py)."""
    return get_class(name)(crop, log, target, norm, norm_gamma, stats, **options)


def make_transform(name, crop, log, **options):
    """A representation that only transforms windows (what the statistics measure)."""
    return get_class(name)(crop, log, **options)


def options_of(cfg, name=None):
    """The representation's own options (e.g. blockdct's block) from a config."""
    return {k: cfg[k] for k in get_class(name or cfg["representation"]).options}


def from_config(cfg, stats=None):
    """The representation a resolved config names, with its normalisation statistics."""
    return make(cfg["representation"], cfg["crop"], cfg["signed_log"], cfg["target"],
                cfg["norm"], cfg["norm_gamma"], stats, **options_of(cfg))


def from_state(state):
    return get_class(state["name"]).from_state(state)
