"""RemoteSAM's tasks derived from one probability map: detection boxes, count, grounding box and presence.

Detection: connected components of the thresholded map (after a 1-pixel closing so that thin gaps inside one
item do not split it), each box scored by the mean probability inside its component, then NMS at IoU 0.5.
Count: the number of boxes kept. Grounding: the union box. Presence: 0.5·max + 0.5·mean of the probability
map, as in RemoteSAM, where the mean is taken over the predicted region so that small objects still count.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

NMS_IOU = 0.5
MIN_AREA_FRACTION = 0.0005  # components smaller than this share of the image are noise
PRESENCE_THRESHOLD = 0.5


@dataclass
class Detection:
    """One detected object: box (x0, y0, x1, y1, exclusive) in pixels and its score."""

    box: tuple[int, int, int, int]
    score: float


def min_area(shape: tuple[int, int]) -> int:
    """Smallest component area (pixels) that counts as an object in an image of ``shape``."""
    return max(4, int(MIN_AREA_FRACTION * shape[0] * shape[1]))


def box_iou(a: tuple[int, ...], b: tuple[int, ...]) -> float:
    """IoU of two (x0, y0, x1, y1) boxes."""
    ix = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def nms(detections: list[Detection], iou: float = NMS_IOU) -> list[Detection]:
    """Greedy non-maximum suppression, highest score first."""
    kept: list[Detection] = []
    for det in sorted(detections, key=lambda d: d.score, reverse=True):
        if all(box_iou(det.box, k.box) <= iou for k in kept):
            kept.append(det)
    return kept


def detect(probability: np.ndarray, threshold: float = 0.5) -> list[Detection]:
    """Boxes of the connected components of ``probability > threshold`` (scored, NMS-filtered)."""
    binary = probability > threshold
    if not binary.any():
        return []
    closed = ndimage.binary_closing(binary, structure=np.ones((3, 3), bool)) | binary
    labels, count = ndimage.label(closed, structure=np.ones((3, 3), bool))
    smallest = min_area(binary.shape)
    detections = []
    for index, region in enumerate(ndimage.find_objects(labels), start=1):
        component = labels[region] == index
        if component.sum() < smallest:
            continue
        score = float(probability[region][component].mean())
        ys, xs = region
        detections.append(Detection((xs.start, ys.start, xs.stop, ys.stop), score))
    return nms(detections)


def grounding_box(detections: list[Detection]) -> tuple[int, int, int, int] | None:
    """The union box of all detections (None when there are none)."""
    if not detections:
        return None
    boxes = np.array([d.box for d in detections])
    return int(boxes[:, 0].min()), int(boxes[:, 1].min()), int(boxes[:, 2].max()), int(boxes[:, 3].max())


def presence_score(probability: np.ndarray, threshold: float = 0.5) -> float:
    """0.5·max + 0.5·mean of the probability over the predicted region (0.5·max when nothing is predicted)."""
    region = probability > threshold
    mean = float(probability[region].mean()) if region.sum() >= min_area(probability.shape) else 0.0
    return 0.5 * float(probability.max()) + 0.5 * mean


def iou(pred: np.ndarray, target: np.ndarray) -> float:
    """Intersection over union of two boolean masks (1 when both are empty)."""
    union = int((pred | target).sum())
    return int((pred & target).sum()) / union if union else 1.0
