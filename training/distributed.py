"""This process's place in a torchrun job, or a single process: rank, world size, device, and
the few collectives the training loop needs (all of them outside the step, except the device
all-reduce that agrees on skipping a non-finite step)."""
import gc
import hashlib
import os

import torch
import torch.distributed as dist

from helpers.devices import resolve_device


class Distributed:
    """This process's place in a torchrun job (or a single process): rank, world, device, and
    the few collectives the loop needs. The device comes from helpers.devices.resolve_device
    (indexed: cuda:LOCAL_RANK); a device that cannot be used raises DeviceError."""

    def __init__(self, device="auto"):
        self.ddp = int(os.environ.get("WORLD_SIZE", "1")) > 1
        self.device = resolve_device(device, ddp=self.ddp)
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
        if self.ddp and not dist.is_initialized():
            dist.init_process_group("nccl" if self.device.type == "cuda" else "gloo")
        self.rank = dist.get_rank() if self.ddp else 0
        self.world = dist.get_world_size() if self.ddp else 1
        self.master = self.rank == 0

    def any(self, flag):
        """True on every rank if it is true on any (ranks must leave the loop together)."""
        if not self.ddp:
            return bool(flag)
        t = torch.tensor([float(flag)], device=self.device)
        dist.all_reduce(t)
        return t.item() > 0

    def any_on_device(self, flag):
        """A device bool, true on every rank where it is true on any: a collective on the
        device, with no host read (the training step agrees on skipping an update this way)."""
        if not self.ddp:
            return flag
        t = flag.float()
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return t > 0

    def from_master(self, value):
        """Rank 0's float on every rank: decisions that depend on a clock are taken once."""
        if not self.ddp:
            return value
        t = torch.tensor([float(value)], dtype=torch.float64, device=self.device)
        dist.broadcast(t, src=0)
        return t.item()

    def broadcast_object(self, obj):
        if not self.ddp:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def gather_object(self, obj):
        if not self.ddp:
            return [obj]
        out = [None] * self.world
        dist.all_gather_object(out, obj)
        return out

    def close(self):
        """Leave the job. The training objects that hold the process group (DDP's reducer)
        are collected first, so that the group is torn down here, while the interpreter is
        whole: torn down at interpreter exit, gloo's threads can abort the process
        ("terminate called without an active exception") after a run that succeeded."""
        if self.ddp and dist.is_initialized():
            gc.collect()
            dist.destroy_process_group()


def weights_digest(model):
    """SHA-256 of all parameters and buffers, in order."""
    h = hashlib.sha256()
    for v in model.state_dict().values():
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()
