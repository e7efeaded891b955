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
                reference: Image.Image | None = None, region: str = "",
                region_mask: Image.Image | None = None, heads_off: str = "") -> tuple[Image.Image, dict]:
        """Restore an image, or one region of it, as a free-text instruction asks.

        Args:
            image: the degraded image (any mode; converted to RGB, large images downscaled)
            prompt: the instruction, e.g. "remove the noise"
            model: "" for the embedded restorer, or a hub id
            reference: the clean image, optional (same size): with it the result reports PSNR and SSIM
            region: where to restore, optional: a box "[x0, y0, x1, y1]" in image pixels, or words the segmentation
                panel finds, e.g. "the bag"; empty for the whole image
            region_mask: where to restore as a mask image the size of the image (white = restore), optional
            heads_off: attention heads of the embedded restorer switched off for this call only, a head list
                ("5.3", "L5H3", "5.*", "L5", "all"; layer.head of its MDTA stack, see restoration_head_effects);
                "" = none

        Returns:
            restored: the restored image (outside the region: the input, blended over a feathered edge)
            result: degradation, confidence, probabilities, image_size, tiles, seconds, region, notes, heads_off (the
                canonical head list) and, given a reference, psnr, ssim, input_psnr, input_ssim (with a region also
                inside and outside it)
        """
        ...

    @endpoint(input="image", restored="image", baseline="image", result="json")
    def restore_compare(self, image: Image.Image | None, prompt: str = "", model: str = "",
                        reference: Image.Image | None = None, region: str = "",
                        region_mask: Image.Image | None = None,
                        heads_off: str = "") -> tuple[Image.Image, Image.Image, Image.Image, dict]:
        """As restore, next to the fast classical baseline of the understood degradation.

        Args:
            image: the degraded image
            prompt: the instruction
            model: "" for the embedded restorer, or a hub id
            reference: the clean image, optional (PSNR/SSIM of the result and of the baseline)
            region: a box "[x0, y0, x1, y1]" or words naming the region to restore, optional
            region_mask: a mask image of the region to restore, optional
            heads_off: attention heads of the embedded restorer switched off for this call only (as in restore);
                "" = none

        Returns:
            input: the input as the model saw it (RGB, maybe downscaled)
            restored: the restored image
            baseline: the fast classical method's result (non-local means, dark channel prior or guided filter; in the
                same region), or the input when the degradation is "none"
            result: as restore's result, plus "baseline" with its name, seconds and, given a reference, PSNR/SSIM
        """
        ...

    @endpoint(atlas="json")
    def restoration_head_effects(self, model: str = "", tasks: str = "") -> dict:
        """The head atlas: each restoration task's PSNR change when one MDTA head alone is switched off, on fixed
        held-out crops restored with the task's canonical instruction.

        Shipped with the app for the embedded model (when its weights change, recomputed in about 30 CPU-seconds),
        and cached per model in memory and on disk.

        Args:
            model: "" for the embedded restorer (hub models expose no heads).
            tasks: comma-separated tasks to report, of noise, haze, rain ("" = all three).

        Returns:
            atlas: ``model``, ``stack``, ``layers``, ``heads``, ``heads_per_layer``, ``layer_names``, ``tasks``,
                ``metric`` {task: unit}, ``baseline`` {task: PSNR}, ``effects`` {task: layers×heads, PSNR(head off) −
                baseline in dB, None where a layer lacks the head}, ``relative`` (in % of the baseline),
                ``specificity`` (layers×heads, 0–1), ``top`` {task: heads whose removal lowers its PSNR most},
                ``prompt_injection`` {task: per layer, PSNR change when that block's prompt modulation is the
                identity}, ``probe``, ``seconds`` (of the computation), ``cached``.
        """
        ...

    @endpoint(overlay="image", region="json")
    def restoration_region(self, image: Image.Image | None, region: str = "",
                           region_mask: Image.Image | None = None) -> tuple[Image.Image, dict]:
        """The region a restoration would touch, drawn on the image (before restoring).

        Args:
            image: the degraded image.
            region: a box "[x0, y0, x1, y1]" in image pixels or words naming the region, e.g. "the bag".
            region_mask: a mask image of the region (white = restore).

        Returns:
            overlay: the image dimmed outside the region, the region outlined.
            region: JSON with the region's ``source``, ``area`` (share of the image), ``box`` and ``feather_px``.
        """
        ...

    @endpoint(denoised="image", summary="json")
    def compare_cbm3d(self, image: Image.Image | None, reference: Image.Image | None = None, region: str = "",
                      region_mask: Image.Image | None = None, job: str = "") -> tuple[Image.Image, dict]:
        """Denoise with CBM3D, the strongest classical denoiser (slow: about 16 s per 512² image on a CPU core; at most
        1024² px, the whole image or the region's box).

        Args:
            image: the noisy image.
            reference: the clean image (optional, same size) for PSNR/SSIM.
            region: a box "[x0, y0, x1, y1]" or words naming the region to denoise (optional).
            region_mask: a mask image of the region to denoise (optional).
            job: an id of the caller's choosing (letters, digits, '_', '-', '.') that ``restoration_progress`` and
                ``restoration_cancel`` take.

        Returns:
            denoised: CBM3D's result (σ estimated from the image), computed in a child process.
            summary: JSON with ``name``, ``sigma``, ``seconds`` and, given the reference, ``psnr``/``ssim``
                (inside/outside the region too when there is one).
        """
        ...

    @endpoint(progress="json")
    def restoration_progress(self, job: str = "") -> dict:
        """Progress of a running CBM3D comparison.

        Args:
            job: the id given to ``compare_cbm3d``.

        Returns:
            progress: JSON with ``running`` (true while the job runs), ``elapsed_seconds`` and
                ``expected_seconds`` (a rough estimate from the image size).
        """
        ...

    @endpoint(cancelled="json")
    def restoration_cancel(self, job: str = "") -> dict:
        """Stop a running CBM3D comparison after its current tile.

        Args:
            job: the id given to ``compare_cbm3d``.

        Returns:
            cancelled: JSON with ``cancelled`` (true when the job was running; it stops at once).
        """
        ...
