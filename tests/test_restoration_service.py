"""The restoration service with the embedded model from assets/: API shape, understanding and bad input."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from backends.core.client import LocalClient
from backends.core.images import MAX_SIDE, prepare_image, to_pil
from backends.core.service import ServiceError
from backends.restoration.adapters import EMBEDDED_ID
from backends.restoration.evaluate import degraded_case
from backends.restoration.images import heldout_images
from backends.restoration.prompts import TASKS, training_templates
from backends.restoration.service import RestorationService


@pytest.fixture(scope="module")
def service() -> RestorationService:
    return RestorationService(device="cpu")


@pytest.fixture(scope="module")
def clean() -> Image.Image:
    return Image.fromarray(heldout_images(64)["coffee"])


@pytest.fixture(scope="module")
def noisy(clean: Image.Image) -> Image.Image:
    return to_pil(degraded_case(np.asarray(clean), "noise", 25.0, seed=0))


def test_restore_answers_the_api_contract(service: RestorationService, noisy: Image.Image, clean: Image.Image):
    restored, summary = service.call("restore", noisy, "please remove the noise", "", clean)
    assert restored.size == noisy.size and restored.mode == "RGB"
    assert summary["model"] == EMBEDDED_ID and summary["degradation"] in TASKS
    assert 0 <= summary["confidence"] <= 1 and abs(sum(summary["probabilities"].values()) - 1) < 1e-3
    for key in ("psnr", "ssim", "input_psnr", "input_ssim", "seconds", "tiles"):
        assert key in summary
    _, without_reference = service.call("restore", noisy, "please remove the noise", "", None)
    assert "psnr" not in without_reference


def test_compare_adds_the_classical_baseline(service: RestorationService, noisy: Image.Image, clean: Image.Image):
    shown, restored, baseline, summary = service.call("restore_compare", noisy, "denoise this photo", "", clean)
    assert shown.size == restored.size == baseline.size == noisy.size
    if summary["degradation"] == "noise":
        assert summary["baseline"]["name"] == "non-local means"
        assert summary["baseline"]["psnr"] > summary["input_psnr"]


@pytest.mark.parametrize(("prompt", "task"), [("please remove the rain streaks", "rain"),
                                              ("Defog this photo please", "haze"),
                                              ("There is a lot of digital grain in this picture", "noise")])
def test_the_instruction_is_understood_before_restoring(service: RestorationService, prompt: str, task: str):
    answer = service.call("understand", None, prompt, "")
    assert answer["degradation"] == task and answer["confidence"] > 0.5


def test_a_new_wording_steers_like_a_training_instruction(service: RestorationService):
    """"Defog this photo please" is not a training instruction; steered by its own embedding the step-12,783 network
    left the haze in (−11 dB); steered by the nearest haze instruction it restores like one."""
    clean = heldout_images(128)["grace_hopper"]
    hazy = to_pil(degraded_case(clean, "haze", None, seed=3))
    _, new_wording = service.call("restore", hazy, "Defog this photo please", "", Image.fromarray(clean))
    _, training_wording = service.call("restore", hazy, "remove the haze", "", Image.fromarray(clean))
    assert new_wording["steered_by"] in training_templates()["haze"]
    assert training_wording["steered_by"] == "remove the haze"
    assert new_wording["psnr"] > new_wording["input_psnr"] + 5
    assert new_wording["psnr"] > training_wording["psnr"] - 1.5


def test_an_empty_instruction_gets_a_suggestion(service: RestorationService, noisy: Image.Image):
    answer = service.call("understand", noisy, "", "")
    assert answer["degradation"] is None and "noise" in answer["suggestion"]
    assert service.call("understand", None, "   ", "")["suggestion"]
    with pytest.raises(ServiceError, match="Type an instruction"):
        service.call("restore", noisy, "", "", None)


def test_nonsense_and_too_long_instructions(service: RestorationService, noisy: Image.Image):
    answer = service.call("understand", None, "banana keyboard purple", "")
    assert answer["degradation"] in TASKS and len(answer["probabilities"]) == 4
    with pytest.raises(ServiceError, match="too long"):
        service.call("restore", noisy, "remove the rain " * 100, "", None)


@pytest.mark.parametrize("mode", ["L", "RGBA", "I;16", "P", "CMYK"])
def test_other_image_modes_are_converted(service: RestorationService, clean: Image.Image, mode: str):
    sixteen_bit = Image.fromarray(np.asarray(clean.convert("L"), np.uint16) * 257)
    image = sixteen_bit if mode == "I;16" else clean.convert(mode)
    restored, summary = service.call("restore", image, "remove the noise", "", None)
    assert restored.size == clean.size and restored.mode == "RGB"
    if mode in ("L", "RGBA", "I;16"):
        assert summary["notes"]


def test_bad_images_are_refused_clearly(service: RestorationService, noisy: Image.Image):
    for image, message in [(None, "upload"), (Image.new("RGB", (8, 40)), "too small"), ("not an image", "read")]:
        with pytest.raises(ServiceError, match=message):
            service.call("restore", image, "remove the noise", "", None)
    with pytest.raises(ServiceError, match="same size"):
        service.call("restore", noisy, "remove the noise", "", Image.new("RGB", (32, 32)))


def test_huge_images_are_downscaled_with_a_note():
    array, _, notes = prepare_image(Image.new("RGB", (3000, 600), (10, 20, 30)))
    assert max(array.shape[:2]) == MAX_SIDE and "downscaled" in notes[0]


def test_the_client_reaches_the_service(service: RestorationService, noisy: Image.Image):
    client = LocalClient("restoration", service)
    assert client.info()["panel"] == "restoration"
    assert client.call("understand", noisy, "it is too hazy", "")["degradation"] == "haze"
