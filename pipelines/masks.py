"""Binary masks on the wire: run-length encoding and polygons.

``RleMask.counts`` is a row-major run-length encoding that always starts with a
run of zeros (possibly of length 0): for a 2x3 mask ``[[0, 1, 1], [1, 0, 0]]``
the flattened pixels are ``0 1 1 1 0 0`` and ``counts`` is ``[1, 3, 2]``. The
counts always add up to ``height * width``. Row-major (unlike COCO's
column-major RLE) so a consumer can decode line by line.
"""

from __future__ import annotations

import numpy as np

from altlas.schemas.types import RleMask


def encode_rle(mask: np.ndarray) -> RleMask:
    """An (H, W) boolean mask as row-major runs, zeros first."""
    if mask.ndim != 2:
        raise ValueError(f"a mask is 2-D, got shape {mask.shape}")
    height, width = mask.shape
    flat = np.asarray(mask, dtype=bool).reshape(-1)
    if flat.size == 0:
        return RleMask(height=height, width=width, counts=[])
    changes = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    bounds = np.concatenate(([0], changes, [flat.size]))
    runs = np.diff(bounds).tolist()
    if flat[0]:
        runs.insert(0, 0)
    return RleMask(height=height, width=width, counts=[int(r) for r in runs])


def decode_rle(rle: RleMask) -> np.ndarray:
    """The (H, W) boolean mask an RleMask describes."""
    total = rle.height * rle.width
    if sum(rle.counts) != total or any(c < 0 for c in rle.counts):
        raise ValueError(f"counts add up to {sum(rle.counts)}, the mask has {total} pixels")
    values = np.arange(len(rle.counts)) % 2 == 1
    flat = np.repeat(values, rle.counts)
    return flat.reshape(rle.height, rle.width)


def mask_polygons(mask: np.ndarray, *, min_points: int = 3) -> list[list[float]]:
    """Outer contours of a mask as flat ``[x1, y1, x2, y2, ...]`` lists in pixel coordinates."""
    import cv2  # installed with the vision extra (ultralytics needs it); only instance masks use it

    contours, _ = cv2.findContours(
        np.ascontiguousarray(mask, dtype=np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE
    )
    polygons = []
    for contour in contours:
        points = contour.reshape(-1, 2)
        if len(points) >= min_points:
            polygons.append([float(v) for v in points.reshape(-1)])
    return polygons
