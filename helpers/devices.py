"""The one device resolver: a device name from a config or a flag -> an indexed torch.device.

    device = resolve_device("auto")          # cuda:LOCAL_RANK when CUDA is there, else cpu
    device = resolve_device("cuda")          # cuda:LOCAL_RANK (0 outside torchrun)
    device = resolve_device("cuda:1")        # as asked (one process); under DDP cuda:LOCAL_RANK

Training (`Distributed`), derain.py, bench.py, bench_sampling.py, make_figures.py and ablate.py
all resolve through it. CUDA devices always come back with an index, because
`torch.cuda.set_device` refuses an index-less one ("Expected a torch.device with a specified
index"), which is how the main job used to die at start-up on every GPU.
"""
import os

import torch

from helpers.errors import InputError

NAMES = "auto, cpu, cuda or cuda:N"


class DeviceError(InputError):
    """A device that cannot be used here; the message is one line saying what to do."""


def resolve_device(name="auto", local_rank=None, ddp=False):
    """'auto' | 'cpu' | 'cuda' | 'cuda:N' (| any other torch device type, e.g. 'mps') ->
    torch.device. CUDA gets the index N, or LOCAL_RANK (torchrun's; 0 outside it) when no
    index is given or when the process is one rank of a DDP job (each rank its own GPU).
    Raises DeviceError when CUDA is asked for and this machine has none, or has too few."""
    if isinstance(name, torch.device):
        name = str(name)
    text = str(name).strip().lower()
    if local_rank is None:
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if text == "auto":
        text = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(text)
    except (RuntimeError, ValueError):
        raise DeviceError(f"--device {name}: not a device name; use {NAMES}") from None
    if device.type != "cuda":
        return device
    if not torch.cuda.is_available():
        build = "a CPU-only build" if torch.version.cuda is None else f"built for CUDA " \
            f"{torch.version.cuda}, but no GPU or driver is visible"
        raise DeviceError(f"--device {name}: CUDA is not available on this machine (torch "
                          f"{torch.__version__}, {build}); use --device cpu or auto")
    index = local_rank if device.index is None or ddp else device.index
    count = torch.cuda.device_count()
    if index >= count:
        raise DeviceError(f"--device {name}: GPU {index} asked for, but this machine shows "
                          f"{count} (CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES')})")
    return torch.device("cuda", index)
