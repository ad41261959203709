"""Seeds derived from names and numbers, identical on every run and machine."""
import hashlib


def hash_seed(*parts):
    """A 56-bit seed that is a pure function of `parts` (their repr), e.g.
    hash_seed(seed, step, rank) for a training step, hash_seed("derain", seed, index) for an
    image; Python's hash() would change with PYTHONHASHSEED."""
    return int.from_bytes(hashlib.sha256(repr(parts).encode()).digest()[:7], "little")
