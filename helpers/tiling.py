"""Tiling an image into overlapping windows of the training crop, and blending them back.

The statistics (representations/statistics.py) tile with overlap 0, the training data pads small
images the same way, and deraining (sampling.py) tiles with OVERLAP and blends with
window_weight. Images here are (3, H, W) NumPy arrays (cut_windows also takes a tensor);
nothing here knows about models.
"""
import math

import numpy as np

OVERLAP = 0.5  # fraction of a window shared with its neighbour when deraining


def window_starts(length, crop, overlap=0.0):
    """Start offsets of windows of `crop` covering [0, length), neighbours sharing at least
    `overlap` of a window: evenly spaced, the first at 0 and the last flush with the end.
    Statistics tile with overlap 0; deraining with OVERLAP."""
    if length <= crop:
        return [0]
    stride = max(1, int(crop * (1 - overlap)))
    n = math.ceil((length - crop) / stride) + 1
    return sorted({round(i * (length - crop) / (n - 1)) for i in range(n)})


def window_boxes(h, w, crop, overlap=0.0):
    """(y, x) of every window of an h x w image, row by row."""
    return [(y, x) for y in window_starts(h, crop, overlap) for x in window_starts(w, crop, overlap)]


def cut_windows(image, boxes, crop):
    """The (N, C, crop, crop) stack of a (C, H, W) image's windows at `boxes` (window_boxes):
    a NumPy array for an array, a tensor on the image's device for a tensor."""
    parts = [image[:, y:y + crop, x:x + crop] for y, x in boxes]
    if isinstance(image, np.ndarray):
        return np.stack(parts)
    import torch
    return torch.stack(parts)


def pad_to(img, crop):
    """Reflect-pad a (3, H, W) image so both sides are at least `crop` (small photos)."""
    _, h, w = img.shape
    ph, pw = max(0, crop - h), max(0, crop - w)
    if ph == 0 and pw == 0:
        return img
    return np.pad(img, ((0, 0), (0, ph), (0, pw)), mode="reflect" if min(h, w) > 1 else "edge")


def window_weight(crop):
    """(crop, crop) raised-cosine weight, positive everywhere: near 0 at a window's edge, where
    its neighbour is near its centre, so overlapping windows hand over smoothly. Weights are
    normalised by their sum, so a pixel covered by one window keeps that window's value."""
    w = np.sin(np.pi * (np.arange(crop) + 0.5) / crop) ** 2
    return np.outer(w, w)


def count_windows(h, w, crop, ensemble=1):
    return len(window_boxes(max(h, crop), max(w, crop), crop, OVERLAP)) * ensemble
