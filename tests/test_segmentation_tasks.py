"""Tasks from one probability map (RemoteSAM), exports, and parsing of the API's points and box."""

from __future__ import annotations

import numpy as np
import pytest

from backends.core.cache import LRUCache
from backends.core.service import ServiceError
from backends.segmentation.export import decode_rle, encode_rle, mask_image, overlay
from backends.segmentation.query import MAX_CLICKS, parse_box, parse_points
from backends.segmentation.tasks import Detection, detect, grounding_box, nms, presence_score


def _two_blobs() -> np.ndarray:
    prob = np.zeros((64, 80), np.float32)
    prob[5:20, 5:25] = 0.9
    prob[30:50, 40:70] = 0.7
    prob[60, 0] = 0.99  # one-pixel speck: noise, not an object
    return prob


def test_detection_count_grounding_and_presence():
    detections = detect(_two_blobs())
    assert [d.box for d in detections] == [(5, 5, 25, 20), (40, 30, 70, 50)]
    assert detections[0].score == pytest.approx(0.9)
    assert grounding_box(detections) == (5, 5, 70, 50)
    assert presence_score(_two_blobs()) > 0.5
    empty = np.full((64, 80), 0.1, np.float32)
    assert detect(empty) == [] and grounding_box([]) is None and presence_score(empty) < 0.5


def test_thin_gaps_inside_one_item_do_not_split_it():
    prob = np.zeros((40, 40), np.float32)
    prob[10:30, 10:19] = 0.9
    prob[10:30, 20:30] = 0.9  # one-pixel gap at column 19
    assert len(detect(prob)) == 1


def test_nms_drops_overlapping_lower_scored_boxes():
    kept = nms([Detection((0, 0, 10, 10), 0.5), Detection((1, 1, 10, 10), 0.9), Detection((20, 20, 30, 30), 0.4)])
    assert [d.score for d in kept] == [0.9, 0.4]


def test_coco_rle_round_trip_and_known_value():
    assert encode_rle(np.eye(4, dtype=bool)) == {"size": [4, 4], "counts": "01400000"}
    rng = np.random.default_rng(0)
    for _ in range(50):
        mask = rng.random(tuple(rng.integers(1, 50, 2))) < rng.random()
        assert np.array_equal(decode_rle(encode_rle(mask)), mask)


def test_mask_image_and_overlay():
    from PIL import Image

    mask = _two_blobs() > 0.5
    assert np.array_equal(np.asarray(mask_image(mask)) > 0, mask)
    picture = overlay(Image.new("RGB", (80, 64)), mask, detect(_two_blobs()), [(3, 3, 1), (60, 10, 0)], (1, 1, 30, 30))
    assert picture.size == (80, 64) and np.asarray(picture)[10, 10].any()


def test_points_and_box_parsing():
    assert parse_points("", 100, 50) == ([], [])
    assert parse_points("[[10, 20, 1], [99.5, 0, 0]]", 100, 50)[0] == [(10.0, 20.0, 1), (99.5, 0.0, 0)]
    clicks, notes = parse_points(str([[1, 1, 1]] * (MAX_CLICKS + 2)), 100, 50)
    assert len(clicks) == MAX_CLICKS and notes
    for bad, message in [("[[200, 10, 1]]", "outside"), ("[[1, 2]]", "triples"), ("[[1, 2, 5]]", "label"),
                         ("{", "JSON"), ('[["a", 2, 1]]', "number")]:
        with pytest.raises(ServiceError, match=message):
            parse_points(bad, 100, 50)
    assert parse_box("[30, 40, 5, 2]", 100, 50) == (5.0, 2.0, 30.0, 40.0)
    assert parse_box("[]", 100, 50) is None and parse_box("  ", 100, 50) is None
    assert parse_box("[-10, -10, 500, 500]", 100, 50) == (0.0, 0.0, 100.0, 50.0)
    for bad, message in [("[200, 60, 300, 90]", "outside"), ("[1, 2, 3]", "list"), ("[5, 5, 6, 6]", "small")]:
        with pytest.raises(ServiceError, match=message):
            parse_box(bad, 100, 50)


def test_lru_cache_is_bounded():
    cache: LRUCache[str, int] = LRUCache(2)
    cache.put("a", 1)
    cache.put("b", 2)
    assert cache.get("a") == 1
    cache.put("c", 3)
    assert cache.get("b") is None and cache.get("a") == 1 and len(cache) == 2
