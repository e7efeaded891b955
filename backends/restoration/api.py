"""The Restoration panel's public API (torch-free; implemented by :mod:`backends.restoration.service`)."""

from __future__ import annotations

from PIL import Image

from backends.core.api import PanelAPI, endpoint


class RestorationAPI(PanelAPI):
    """An image and a free-text instruction → the restored image (TextPromptIR-style)."""

    panel = "restoration"

    @endpoint(understanding="json")
    def understand(self, image: Image.Image | None = None, prompt: str = "", model: str = "") -> dict:
        """How an instruction is understood (noise, haze, rain or none), before restoring.

        Args:
            image: the degraded image, optional: with it an empty instruction gets a suggestion guessed from it
            prompt: the instruction, e.g. "remove the rain"; empty for a suggestion
            model: "" for the embedded restorer, or a hub id (see spaces.yml)

        Returns:
            understanding: prompt, degradation, confidence, probabilities and notes, or a suggestion
        """
        ...

    @endpoint(restored="image", result="json")
    def restore(self, image: Image.Image | None, prompt: str = "", model: str = "",
                reference: Image.Image | None = None) -> tuple[Image.Image, dict]:
        """Restore an image as a free-text instruction asks.

        Args:
            image: the degraded image (any mode; converted to RGB, large images downscaled)
            prompt: the instruction, e.g. "remove the noise"
            model: "" for the embedded restorer, or a hub id
            reference: the clean image, optional: with it the result reports PSNR and SSIM

        Returns:
            restored: the restored image
            result: degradation, confidence, probabilities, image_size, tiles, seconds, notes and, given a
                reference, psnr, ssim, input_psnr and input_ssim
        """
        ...

    @endpoint(input="image", restored="image", baseline="image", result="json")
    def restore_compare(self, image: Image.Image | None, prompt: str = "", model: str = "",
                        reference: Image.Image | None = None) -> tuple[Image.Image, Image.Image, Image.Image, dict]:
        """As restore, plus the classical baseline for the understood degradation.

        Args:
            image: the degraded image
            prompt: the instruction
            model: "" for the embedded restorer, or a hub id
            reference: the clean image, optional (PSNR/SSIM of the result and of the baseline)

        Returns:
            input: the input as the model saw it (RGB, maybe downscaled)
            restored: the restored image
            baseline: the classical method's result (non-local means, dark channel prior or guided filter)
            result: as restore's result, plus "baseline" with its name, seconds and, given a reference, PSNR/SSIM
        """
        ...
