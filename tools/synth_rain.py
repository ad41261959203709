"""The command line of helpers/synth_rain.py: build the default synthetic set, or a paired set
from your own clean photos.

    python -m tools.synth_rain                   # build data/synthetic (at once if complete)
    python -m tools.synth_rain --force           # rebuild it from scratch
    python -m tools.synth_rain photos/ a.jpg --out data/my_rain --variants 4 --seed 0 [--size 256]
"""
import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from helpers.images import ImageError, read_rgb, write_text
from helpers.synth_rain import collect_images, build_default, write_paired_set


def main(argv=None):
    ap = argparse.ArgumentParser(
        prog="python -m tools.synth_rain",
        description="Without SOURCES: build the default synthetic set (data/synthetic). With "
                    "SOURCES: write a Rain14000-named paired set from your clean photos.")
    ap.add_argument("sources", nargs="*", help="clean photos or folders of them")
    ap.add_argument("--out", help="output folder for SOURCES (required with SOURCES)")
    ap.add_argument("--variants", type=int, default=4, help="rainy versions per photo (4)")
    ap.add_argument("--seed", type=int, default=0, help="random seed (0)")
    ap.add_argument("--size", type=int, default=None,
                    help="resize so the shorter side is SIZE px (default: keep size)")
    ap.add_argument("--root", default="data/synthetic",
                    help="default-set folder, relative to the repository root (data/synthetic)")
    ap.add_argument("--force", action="store_true", help="rebuild the default set")
    args = ap.parse_args(argv)

    if not args.sources:
        info = build_default(args.root, seed=args.seed, force=args.force)
        state = f"built in {info['seconds']:.1f} s" if info["built"] else "already complete"
        print(f"default set {state}: {info['root']}")
        for name in ("train", "val"):
            print(f"  {name}: {info[name + '_clean']} clean, {info[name + '_pairs']} pairs "
                  f"from {', '.join(info[name + '_sources'])}")
        return 0
    if not args.out:
        ap.error("--out is required when SOURCES are given")
    if args.variants < 1:
        ap.error("--variants must be >= 1")
    try:
        paths = collect_images(args.sources)
        out = Path(args.out).resolve()
        if any(p.resolve().parent == out for p in paths):
            raise ImageError(f"{args.out}: the output folder holds source photos; choose "
                             "another --out so clean copies and sources do not mix")
        for p in paths:  # check every file before writing anything: a bad one fails early
            read_rgb(p)  # decodes fully; rejects grayscale / alpha / 16-bit with a clear message
    except ImageError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    records = write_paired_set(paths, out, args.variants, np.random.default_rng(args.seed),
                               size=args.size)
    manifest = {"seed": args.seed, "variants": args.variants, "size": args.size,
                "sources": {str(r["id"]): str(p) for r, p in zip(records, paths)}}
    write_text(out / "manifest.json", json.dumps(manifest, indent=1) + "\n")
    print(f"wrote {len(records)} clean and {len(records) * args.variants} rainy images to {out} "
          f"in {time.perf_counter() - t0:.1f} s (ID -> source in manifest.json)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
