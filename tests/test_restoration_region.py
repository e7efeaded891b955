"""Restoring one region (box, mask image, words resolved by the segmentation service), the CBM3D comparison with
progress and cancel, the image-mismatch warning, and the one prepare_image every panel shares."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from backends.core.client import LocalClient
from backends.core.images import MIN_SIDE, prepare_image, to_pil
from backends.core.service import ServiceError
from backends.restoration.evaluate import degraded_case, psnr_ssim
from backends.restoration.images import heldout_images
from backends.restoration.region import Region
from backends.restoration.service import RestorationService
from backends.segmentation.service import SegmentationService

SCENE = Path(__file__).resolve().parents[1] / "assets" / "segmentation" / "examples" / "scene_11.png"
BOX = "[8, 8, 40, 36]"


@pytest.fixture(scope="module")
def service() -> RestorationService:
    return RestorationService(device="cpu")


@pytest.fixture(scope="module")
def clean() -> Image.Image:
    """A held-out photo (64², its noisy copy is ``noisy``)."""
    return Image.fromarray(heldout_images(64)["astronaut"])


@pytest.fixture(scope="module")
def noisy(clean: Image.Image) -> Image.Image:
    """``clean`` with σ 25 noise."""
    return to_pil(degraded_case(np.asarray(clean), "noise", 25.0, seed=7))


def _changed(before: Image.Image, after: Image.Image) -> np.ndarray:
    return np.abs(np.asarray(after, np.int16) - np.asarray(before, np.int16)).max(axis=-1) > 0


def test_a_box_restores_only_inside_with_a_feathered_edge(service, noisy, clean):
    restored, summary = service.call("restore", noisy, "please remove the noise", "", clean, BOX)
    changed = _changed(noisy, restored)
    region = summary["region"]
    assert region["source"] == "box" and region["box"] == [8, 8, 40, 36]
    reach = int(np.ceil(4 * region["feather_px"]))  # the Gaussian feather's reach beyond the box
    outside = np.ones_like(changed)
    outside[max(0, 8 - reach):36 + reach, max(0, 8 - reach):40 + reach] = False
    assert not changed[outside].any() and changed[12:32, 12:36].mean() > 0.9
    assert summary["region_psnr"] > summary["input_region_psnr"] + 5
    assert abs(summary["outside_psnr"] - summary["input_outside_psnr"]) < 0.5
    assert summary["input_psnr"] < summary["psnr"] < summary["region_psnr"]


def test_a_mask_image_gives_the_same_region_as_its_box(service, noisy):
    mask = Image.new("L", noisy.size, 0)
    mask.paste(255, (8, 8, 40, 36))
    from_mask, mask_summary = service.call("restore", noisy, "please remove the noise", "", None, "", mask)
    from_box, _ = service.call("restore", noisy, "please remove the noise", "", None, BOX)
    assert mask_summary["region"]["source"] == "mask image" and mask_summary["region"]["box"] == [8, 8, 40, 36]
    assert np.array_equal(np.asarray(from_mask), np.asarray(from_box))


@pytest.mark.parametrize(("region", "mask", "message"), [
    ("[100, 100, 200, 200]", None, "outside"),
    ("[1, 2, 3]", None, "x0, y0, x1, y1"),
    ("[5, 5, nope]", None, "JSON"),
    ("[5, 5, 7, 7]", None, "empty"),
    ("", "black", "empty"),
    ("", "small", "size of the image"),
    (BOX, "black", "one way"),
])
def test_bad_regions_are_refused_clearly(service, noisy, region, mask, message):
    masks = {"black": Image.new("L", noisy.size, 0), "small": Image.new("L", (32, 32), 255)}
    with pytest.raises(ServiceError, match=message):
        service.call("restore", noisy, "please remove the noise", "", None, region, masks.get(mask))


def test_words_are_resolved_by_the_segmentation_service_through_its_client():
    """"the bag" on a noisy scene: the region is the segmentation service's mask for it, and only it is denoised."""
    segmentation = SegmentationService(device="cpu")
    service = RestorationService(device="cpu", segmentation=LocalClient("segmentation", segmentation))
    with Image.open(SCENE) as scene:
        clean = scene.convert("RGB")
    noisy = to_pil(degraded_case(np.asarray(clean), "noise", 25.0, seed=0))
    restored, summary = service.call("restore", noisy, "remove the noise", "", clean, "the bag")
    expected, _ = segmentation.call("segment", noisy, "the bag", "", "", "")
    expected_mask = np.asarray(expected.convert("L")) >= 128
    assert summary["region"]["source"] == "expression 'the bag'"
    assert summary["region"]["area"] == pytest.approx(expected_mask.mean(), abs=1e-3)
    changed = _changed(noisy, restored)
    assert changed[expected_mask].mean() > 0.9 and changed[~expected_mask].mean() < 0.05
    assert summary["region_psnr"] > summary["input_region_psnr"] + 3
    overlay, info = service.call("restoration_region", noisy, "the bag")
    assert overlay.size == noisy.size and info == summary["region"]
    outside = ~expected_mask
    dimmed = np.asarray(overlay, np.float32)[outside].mean() / np.asarray(noisy, np.float32)[outside].mean()
    assert 0.3 < dimmed < 0.45
    with pytest.raises(ServiceError, match="Give a region"):
        service.call("restoration_region", noisy, "")


def test_region_weight_is_one_inside_and_zero_far_outside():
    mask = np.zeros((100, 120), bool)
    mask[30:70, 40:90] = True
    region = Region.from_mask(mask, "test")
    assert region.weight[40:60, 50:80].min() > 0.99 and region.weight[:10].max() < 1e-3
    assert region.weight[30, 60] == pytest.approx(0.5, abs=0.15)  # the feathered edge


def test_cbm3d_comparison_denoises_and_can_be_cancelled(service, noisy, clean):
    denoised, summary = service.call("compare_cbm3d", noisy, clean, "", None, "test-job")
    input_psnr = psnr_ssim(np.asarray(clean) / 255.0, np.asarray(noisy) / 255.0)[0]
    assert summary["name"] == "CBM3D" and summary["psnr"] > input_psnr + 5 and 15 < summary["sigma"] < 30
    assert service.call("restoration_progress", "test-job")["running"] is False
    seen = {}

    def cancel_soon() -> None:
        time.sleep(1.0)
        seen["progress"] = service.call("restoration_progress", "cancel-job")
        seen["cancel"] = service.call("restoration_cancel", "cancel-job")

    canceller = threading.Thread(target=cancel_soon)
    canceller.start()
    started = time.perf_counter()
    with pytest.raises(ServiceError, match="cancelled"):
        service.call("compare_cbm3d", noisy, clean, "", None, "cancel-job")
    canceller.join()
    assert time.perf_counter() - started < 5
    assert seen["progress"]["running"] and seen["progress"]["expected_seconds"] > 0 and seen["cancel"]["cancelled"]
    assert service.call("restoration_cancel", "cancel-job")["cancelled"] is False
    with pytest.raises(ServiceError, match="job id"):
        service.call("compare_cbm3d", noisy, None, "", None, "../no such id")
    with pytest.raises(ServiceError, match="would take minutes"):
        service.call("compare_cbm3d", Image.new("RGB", (1100, 1000)), None, "", None, "")


def test_cbm3d_in_a_region_leaves_the_rest(service, noisy, clean):
    denoised, summary = service.call("compare_cbm3d", noisy, clean, BOX, None, "")
    changed = _changed(noisy, denoised)
    assert changed[12:32, 12:36].mean() > 0.9 and not changed[50:, 50:].any()
    assert summary["region_psnr"] > summary["outside_psnr"] + 5


def test_a_mismatched_instruction_is_warned_with_the_suggestion(service, clean):
    rainy = to_pil(degraded_case(np.asarray(clean), "rain", None, seed=2))
    empty = service.call("understand", rainy, "", "")
    assert empty["cues"]["suggested"] == "rain"
    wrong = service.call("understand", rainy, "remove the haze", "")
    assert wrong["degradation"] == "haze" and "looks unlike haze" in wrong["notes"][0]
    assert wrong["suggestion"] == empty["suggestion"]
    right = service.call("understand", rainy, "remove the rain", "")
    assert "suggestion" not in right and not right["notes"]


def test_nonsense_and_empty_instructions_suggest_the_same(service, noisy):
    empty = service.call("understand", noisy, "", "")
    nonsense = service.call("understand", noisy, "banana keyboard purple", "")
    if nonsense["degradation"] == "none":
        assert nonsense["suggestion"] == empty["suggestion"] and empty["suggestion"] in nonsense["notes"][0]


def test_every_panel_shares_the_minimum_side(service):
    tiny = Image.new("RGB", (MIN_SIDE - 1, 40))
    for call in (lambda: service.call("restore", tiny, "remove the noise", "", None),
                 lambda: SegmentationService(device="cpu").call("segment", tiny, "the bag", "", "", "")):
        with pytest.raises(ServiceError, match=f"at least {MIN_SIDE} px"):
            call()
    assert prepare_image(Image.new("RGB", (MIN_SIDE, MIN_SIDE))).pixels.shape == (MIN_SIDE, MIN_SIDE, 3)


def test_a_very_wide_reference_reports_the_size_used(service):
    rng = np.random.default_rng(0)
    wide, reference = (Image.fromarray((rng.random((40, 3000, 3)) * 255).astype(np.uint8)) for _ in range(2))
    restored, summary = service.call("restore", wide, "remove the noise", "", reference)
    assert restored.size == tuple(summary["image_size"]) == (2048, 27)
    assert any(note.startswith("reference image downscaled from 3000×40 to 2048×27") for note in summary["notes"])
    with pytest.raises(ServiceError, match="too elongated"):
        prepare_image(Image.new("RGB", (5000, 16)))
    with pytest.raises(ServiceError, match=r"reference \(3001×40\)"):
        service.call("restore", wide, "remove the noise", "", Image.new("RGB", (3001, 40)))
