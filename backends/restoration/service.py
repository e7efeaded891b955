"""The Restoration panel's backend service: a free-text instruction steers one all-in-one restoration network.

Endpoints: ``understand`` (which degradation the instruction was understood as, with a confidence; a suggestion
when the instruction is empty), ``restore(image, prompt, model[, reference])`` (the API of issue 6) and
``restore_compare`` (the panel's view: the restored image, the classical baseline for the understood degradation,
and PSNR/SSIM of input, model and baseline when the clean reference is known).
"""

from __future__ import annotations

import time

import numpy as np
from PIL import Image

from backends.core.service import Service, ServiceError
from backends.restoration.adapters import EMBEDDED_ID, EmbeddedRestorer, RestorerAdapter
from backends.restoration.api import RestorationAPI
from backends.restoration.classical import BASELINES, degradation_cues
from backends.restoration.evaluate import psnr_ssim, to_array, to_tensor
from backends.restoration.hub import HUB_ID, InstructIRRestorer
from backends.restoration.inputs import prepare_image, to_pil
from backends.restoration.prompts import SUGGESTED_PROMPTS
from backends.restoration.tiling import count_tiles

MAX_PROMPT_CHARS = 500
LOW_CONFIDENCE = 0.5
IDENTICAL_PSNR = 100.0  # PSNR reported for identical images (instead of infinity, which JSON cannot hold)


class RestorationService(RestorationAPI, Service):
    """Prompt-guided restoration (noise, haze, rain) with prompt understanding and classical baselines."""

    default_model = EMBEDDED_ID
    known_models = (EMBEDDED_ID, HUB_ID)
    half_precision_safe = False

    def load_model(self, model_id: str) -> RestorerAdapter:
        """The embedded model, or InstructIR (hub id or local folder) for any other id."""
        if model_id == EMBEDDED_ID:
            try:
                return EmbeddedRestorer.load(device=self.device)
            except FileNotFoundError as error:
                raise ServiceError(str(error)) from error
        return InstructIRRestorer.from_pretrained(model_id, self.device)

    # -- helpers ------------------------------------------------------------------------------------------------
    @staticmethod
    def _clean_prompt(prompt: str | None) -> str:
        prompt = " ".join((prompt or "").split())
        if len(prompt) > MAX_PROMPT_CHARS:
            raise ServiceError(f"The instruction is too long ({len(prompt)} characters); keep it under "
                               f"{MAX_PROMPT_CHARS}, e.g. '{SUGGESTED_PROMPTS['noise']}'.")
        return prompt

    @staticmethod
    def _suggestion(image: np.ndarray | None) -> dict:
        """What to type: a guess from prompt-free image cues when there is an image, else the three options."""
        if image is None:
            return {"suggestion": SUGGESTED_PROMPTS["noise"],
                    "options": [SUGGESTED_PROMPTS[task] for task in ("noise", "haze", "rain")],
                    "reason": "no image yet: name the degradation you see (noise, haze/fog or rain)"}
        cues = degradation_cues(image)
        guess = cues["suggested"]
        reason = ("the image looks clean to simple measurements; name the degradation you see" if guess == "none"
                  else f"simple measurements of the image point to {guess}")
        return {"suggestion": SUGGESTED_PROMPTS[guess if guess != "none" else "noise"],
                "options": [SUGGESTED_PROMPTS[task] for task in ("noise", "haze", "rain")],
                "reason": reason, "cues": cues}

    def _understanding(self, restorer: RestorerAdapter, prompt: str) -> dict:
        probabilities = restorer.understand(prompt)
        degradation = max(probabilities, key=probabilities.get)
        confidence = probabilities[degradation]
        notes = []
        if degradation == "none":
            notes.append("The instruction was not understood as asking to remove noise, haze or rain; the model "
                         f"will leave the image mostly unchanged. Try e.g. '{SUGGESTED_PROMPTS['noise']}'.")
        elif confidence < LOW_CONFIDENCE:
            notes.append(f"Low confidence ({confidence:.0%}): the instruction is ambiguous; name one degradation.")
        answer = {"degradation": degradation, "confidence": round(confidence, 4),
                  "probabilities": {task: round(p, 4) for task, p in probabilities.items()}, "notes": notes}
        _, anchor = restorer.steering(prompt)
        return answer | ({"steered_by": anchor} if anchor is not None else {})

    def _restore(self, image: Image.Image | None, prompt: str, model: str, reference: Image.Image | None) -> tuple[
            np.ndarray, np.ndarray, dict, np.ndarray | None]:
        array, notes = prepare_image(image)
        prompt = self._clean_prompt(prompt)
        if not prompt:
            suggestion = self._suggestion(array)
            raise ServiceError(f"Type an instruction first. For this image try: '{suggestion['suggestion']}' "
                               f"({suggestion['reason']}).")
        clean = None
        if reference is not None:
            clean, _ = prepare_image(reference, "reference image")
            if clean.shape != array.shape:
                raise ServiceError(f"The reference ({clean.shape[1]}×{clean.shape[0]}) must have the same size as "
                                   f"the image ({array.shape[1]}×{array.shape[0]}).")
        restorer = self.model(model)
        started = time.perf_counter()
        understanding = self._understanding(restorer, prompt)
        restored = to_array(restorer.restore(to_tensor(array), prompt))
        summary = {
            "model": restorer.name, "prompt": prompt, **understanding,
            "image_size": [array.shape[1], array.shape[0]], "tiles": count_tiles(*array.shape[:2]),
            "precision": restorer.precision,
            "seconds": round(time.perf_counter() - started, 3),
        }
        summary["notes"] = notes + understanding["notes"]
        if clean is not None:
            summary.update(_metrics("input", clean, array))
            summary.update(_metrics("", clean, restored))
        return array, restored, summary, clean

    # -- API ----------------------------------------------------------------------------------------------------
    def understand(self, image: Image.Image | None = None, prompt: str = "", model: str = "") -> dict:
        prompt = self._clean_prompt(prompt)
        array = prepare_image(image)[0] if image is not None else None
        if not prompt:
            return {"prompt": "", "degradation": None, "confidence": None, **self._suggestion(array)}
        restorer = self.model(model)
        return {"prompt": prompt, "model": restorer.name, **self._understanding(restorer, prompt)}

    def restore(self, image: Image.Image | None, prompt: str = "", model: str = "",
                reference: Image.Image | None = None) -> tuple[Image.Image, dict]:
        _, restored, summary, _ = self._restore(image, prompt, model, reference)
        return to_pil(restored), summary

    def restore_compare(self, image: Image.Image | None, prompt: str = "", model: str = "",
                        reference: Image.Image | None = None) -> tuple[Image.Image, Image.Image, Image.Image, dict]:
        array, restored, summary, clean = self._restore(image, prompt, model, reference)
        degradation = summary["degradation"]
        started = time.perf_counter()
        if degradation in BASELINES:
            baseline_name, baseline = BASELINES[degradation]
            baseline_image = baseline(array.astype(np.float64))
        else:
            baseline_name, baseline_image = "none (input unchanged)", array
        summary["baseline"] = {"name": baseline_name, "seconds": round(time.perf_counter() - started, 3)}
        if clean is not None:
            summary["baseline"].update(_metrics("", clean, baseline_image))
        return to_pil(array), to_pil(restored), to_pil(baseline_image), summary


def _metrics(prefix: str, clean: np.ndarray, image: np.ndarray) -> dict:
    """PSNR (dB) and SSIM of ``image`` against ``clean``, keys prefixed (e.g. input_psnr)."""
    quantised = np.round(np.clip(image, 0, 1) * 255) / 255  # what the returned 8-bit image holds
    psnr, ssim = psnr_ssim(clean.astype(np.float64), quantised.astype(np.float64))
    key = f"{prefix}_" if prefix else ""
    return {f"{key}psnr": round(min(psnr, IDENTICAL_PSNR), 3), f"{key}ssim": round(ssim, 4)}
