"""What a run writes as it goes: log.jsonl and TensorBoard scalars (rank 0 only), and messages
printed above the progress bar."""
import json
from pathlib import Path


def say_above_bar(msg):
    """Print a message above the progress bar (never through it)."""
    from tqdm import tqdm
    tqdm.write(str(msg))


class RunLog:
    """log.jsonl and TensorBoard scalars, written by rank 0 only."""

    def __init__(self, run_dir, enabled, say):
        self.jsonl = open(Path(run_dir) / "log.jsonl", "a", encoding="utf-8") if enabled else None
        self.writer = None
        if enabled:
            try:
                from torch.utils.tensorboard import SummaryWriter
                self.writer = SummaryWriter(str(Path(run_dir) / "tb"))
            except ImportError:
                say("tensorboard not installed: logging to log.jsonl only")

    def write(self, rec):
        if self.jsonl is None:
            return
        self.jsonl.write(json.dumps(rec) + "\n")
        self.jsonl.flush()
        if self.writer:
            for k, v in rec.items():
                if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool):
                    self.writer.add_scalar(k, v, rec["step"])

    def close(self):
        for f in (self.jsonl, self.writer):
            if f is not None:
                f.close()
