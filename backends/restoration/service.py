"""The Restoration panel's backend service: a free-text instruction steers one all-in-one restoration network.

Endpoints: ``understand`` (which degradation the instruction was understood as, with a confidence, and a warning
when the image looks unlike it; a suggestion when the instruction is empty), ``restore(image, prompt, model[,
reference, region, region_mask])`` (the whole image or one region of it), ``restore_compare`` (the panel's view: the
restored image, the fast classical baseline for the understood degradation, and PSNR/SSIM of input, model and
baseline when the clean reference is known), ``restoration_region`` (the region that would be restored, drawn),
``compare_cbm3d`` (the strongest classical denoiser, slow, with ``restoration_progress``/``restoration_cancel`` per
job), ``restoration_head_effects`` (the head atlas of the embedded restorer). A region given by a referring expression
is resolved by the segmentation service through its client.

``restore``'s ``heads_off`` travels with the call down to every tile's forward pass (nothing on the shared model
changes), so calls with different heads run concurrently.
"""

from __future__ import annotations

import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
from PIL import Image

from backends.core.client import Client, make_client
from backends.core.config import load_config
from backends.core.heads import EffectsCache, choose_tasks, format_heads, select_tasks
from backends.core.images import PreparedImage, prepare_image, to_pil
from backends.core.service import Service, ServiceError
from backends.core.text import check_text
from backends.restoration.adapters import EMBEDDED_ID, EmbeddedRestorer, RestorerAdapter
from backends.restoration.api import RestorationAPI
from backends.restoration.atlas import SHIPPED, Probe, atlas_key, compute_head_effects
from backends.restoration.classical import BASELINES, STRONGEST_BASELINES, degradation_cues, estimate_noise_sigma
from backends.restoration.evaluate import psnr_ssim, to_array, to_tensor
from backends.restoration.hub import HUB_ID, InstructIRRestorer
from backends.restoration.prompts import RESTORATION_TASKS, SUGGESTED_PROMPTS
from backends.restoration.region import Region, masked_psnr_ssim
from backends.restoration.tiling import count_tiles
from backends.segmentation.query import parse_box

MAX_PROMPT_CHARS = 500
LOW_CONFIDENCE = 0.5
IDENTICAL_PSNR = 100.0  # PSNR reported for identical images (instead of infinity, which JSON cannot hold)
CBM3D_SECONDS = (8.0, 40.0)  # CBM3D's rough time here (start-up s, s per megapixel), for the progress estimate
POLL_SECONDS = 0.1
JOB_ID = re.compile(r"[A-Za-z0-9_.-]{1,128}")
MAX_CBM3D_PIXELS = 1024 * 1024  # larger areas would take minutes: the comparison asks for a region instead
ROOT = Path(__file__).resolve().parents[2]
CBM3D_CHILD = ("import sys, numpy as np; from backends.restoration.classical import denoise_cbm3d; "
               "np.save(sys.argv[2], denoise_cbm3d(np.load(sys.argv[1]), float(sys.argv[3])))")


class CancelledError(Exception):
    """Raised inside a job once ``restoration_cancel`` was called for it."""


class RestorationService(RestorationAPI, Service):
    """Prompt-guided restoration (noise, haze, rain) of a whole image or one region, with prompt understanding and
    classical baselines."""

    default_model = EMBEDDED_ID
    known_models = (EMBEDDED_ID, HUB_ID)
    half_precision_safe = False

    def __init__(self, device: str | None = None, segmentation: Client | None = None):
        super().__init__(device)
        self._segmentation = segmentation
        self._jobs: dict[str, dict] = {}  # job id → progress and cancel flag of one running CBM3D comparison
        self._jobs_lock = threading.Lock()
        self.effects_cache = EffectsCache(self.panel, shipped=SHIPPED)

    def load_model(self, model_id: str) -> RestorerAdapter:
        """The embedded model, or InstructIR (hub id or local folder) for any other id."""
        if model_id == EMBEDDED_ID:
            try:
                return EmbeddedRestorer.load(device=self.device)
            except FileNotFoundError as error:
                raise ServiceError(str(error)) from error
        return InstructIRRestorer.from_pretrained(model_id, self.device)

    @property
    def segmentation(self) -> Client:
        """The segmentation panel's client, as spaces.yml configures it (made on first use)."""
        with self._jobs_lock:
            if self._segmentation is None:
                config = load_config().panels.get("segmentation")
                if config is None:
                    raise ServiceError("Regions named in words need the segmentation panel, which spaces.yml lacks; "
                                       "give a box or a mask image instead.")
                self._segmentation = make_client(config)
            return self._segmentation

    # -- helpers ------------------------------------------------------------------------------------------------
    @staticmethod
    def _clean_prompt(prompt: str | None) -> str:
        prompt = check_text(prompt, "instruction", required=False)
        if len(prompt) > MAX_PROMPT_CHARS:
            raise ServiceError(f"The instruction is too long ({len(prompt)} characters); keep it under "
                               f"{MAX_PROMPT_CHARS}, e.g. '{SUGGESTED_PROMPTS['noise']}'.")
        return " ".join(prompt.split())

    @staticmethod
    def _suggestion(image: np.ndarray | None) -> dict:
        """What to type: a guess from prompt-free image cues when there is an image, else the three options."""
        options = [SUGGESTED_PROMPTS[task] for task in ("noise", "haze", "rain")]
        if image is None:
            return {"suggestion": SUGGESTED_PROMPTS["noise"], "options": options,
                    "reason": "no image yet: name the degradation you see (noise, haze/fog or rain)"}
        cues = degradation_cues(image)
        guess = cues["suggested"]
        reason = ("the image looks clean to simple measurements; name the degradation you see" if guess == "none"
                  else f"simple measurements of the image point to {guess}")
        return {"suggestion": SUGGESTED_PROMPTS[guess if guess != "none" else "noise"], "options": options,
                "reason": reason, "cues": cues}

    def _understanding(self, restorer: RestorerAdapter, prompt: str, image: np.ndarray | None) -> dict:
        """How ``prompt`` was understood, with notes (and a suggestion, the one an empty instruction would get) when
        it was not understood as a restoration or the image's cues point to another degradation."""
        probabilities = restorer.understand(prompt)
        degradation = max(probabilities, key=probabilities.get)
        confidence = probabilities[degradation]
        suggestion = self._suggestion(image)
        guess = suggestion.get("cues", {}).get("suggested", "none")
        notes, suggested = [], None
        if degradation == "none":
            suggested = suggestion["suggestion"]
            notes.append("The instruction was not understood as asking to remove noise, haze or rain; the model "
                         f"will leave the image mostly unchanged. Try '{suggested}' ({suggestion['reason']}).")
        elif guess not in ("none", degradation):
            suggested = suggestion["suggestion"]
            notes.append(f"The image looks unlike {degradation}: simple measurements point to {guess}. If that is "
                         f"what is wrong, try '{suggested}'.")
        elif confidence < LOW_CONFIDENCE:
            notes.append(f"Low confidence ({confidence:.0%}): the instruction is ambiguous; name one degradation.")
        answer = {"degradation": degradation, "confidence": round(confidence, 4),
                  "probabilities": {task: round(p, 4) for task, p in probabilities.items()}, "notes": notes}
        _, anchor = restorer.steering(prompt)
        return (answer | ({"steered_by": anchor} if anchor is not None else {})
                | ({"suggestion": suggested} if suggested else {}))

    @staticmethod
    def _prepared(image: Image.Image | None, reference: Image.Image | None) -> tuple[
            PreparedImage, np.ndarray | None, list[str]]:
        """The prepared image, the prepared reference (sizes compared as uploaded) and the notes on both."""
        prepared = prepare_image(image)
        if reference is None:
            return prepared, None, prepared.notes
        if isinstance(reference, Image.Image) and reference.size != image.size:  # before decoding a large one
            raise ServiceError(f"The reference ({reference.size[0]}×{reference.size[1]}) must have the same size as "
                               f"the image ({image.size[0]}×{image.size[1]}).")
        clean = prepare_image(reference, "reference image")
        return prepared, clean.pixels, prepared.notes + clean.notes

    def _region(self, prepared: PreparedImage, original_size: tuple[int, int], region: str,
                region_mask: Image.Image | None) -> Region | None:
        """The region to restore: a box ``[x0, y0, x1, y1]`` (pixels of the uploaded image) or a referring
        expression in ``region``, or a mask image; None for the whole image."""
        region = " ".join(check_text(region, "region", required=False).split())
        if region and region_mask is not None:
            raise ServiceError("Give the region one way: a box or words, or a mask image — not both.")
        height, width = prepared.pixels.shape[:2]
        if region_mask is not None:
            if not isinstance(region_mask, Image.Image):
                raise ServiceError("The region mask could not be read as a picture "
                                   f"(got {type(region_mask).__name__}).")
            return Region.from_mask_image(region_mask, height, width, original_size)
        if not region:
            return None
        if region.startswith("["):
            box = parse_box(region, *original_size)
            return Region.from_box(tuple(value * prepared.scale for value in box), height, width)
        if len(region) > MAX_PROMPT_CHARS:
            raise ServiceError(f"The region description is too long ({len(region)} characters); name one thing, "
                               "e.g. 'the bag'.")
        mask, answer = self.segmentation.call("segment", to_pil(prepared.pixels), region, "", "", "")
        if not answer.get("present", True):
            raise ServiceError(f"The segmentation found no '{region}' in the image; name something visible, or give "
                               "a box or a mask image.")
        found = np.asarray(mask.convert("L").resize((width, height), Image.NEAREST)) >= 128
        return Region.from_mask(found, f"expression '{region}'")

    def _restore(self, image: Image.Image | None, prompt: str, model: str, reference: Image.Image | None,
                 region: str = "", region_mask: Image.Image | None = None, heads_off: str = "") -> tuple[
            np.ndarray, np.ndarray, dict, np.ndarray | None, Region | None]:
        prepared, clean, notes = self._prepared(image, reference)
        array = prepared.pixels
        prompt = self._clean_prompt(prompt)
        if not prompt:
            suggestion = self._suggestion(array)
            raise ServiceError(f"Type an instruction first. For this image try: '{suggestion['suggestion']}' "
                               f"({suggestion['reason']}).")
        restorer = self.model(model)
        switched_off = restorer.parse_heads(heads_off)
        where = self._region(prepared, image.size, region, region_mask)
        started = time.perf_counter()
        understanding = self._understanding(restorer, prompt, array)

        def run(part: np.ndarray) -> np.ndarray:
            return to_array(restorer.restore(to_tensor(part), prompt, heads_off=switched_off))

        restored = run(array) if where is None else where.apply(array, run)
        summary = {
            "model": restorer.name, "prompt": prompt, **understanding,
            "image_size": [array.shape[1], array.shape[0]], "tiles": count_tiles(*array.shape[:2]),
            "precision": restorer.precision, "heads_off": format_heads(switched_off),
            "seconds": round(time.perf_counter() - started, 3),
        }
        summary["notes"] = notes + understanding["notes"]
        if where is not None:
            summary["region"] = where.summary()
        if clean is not None:
            summary.update(_metrics("input", clean, array, where))
            summary.update(_metrics("", clean, restored, where))
        return array, restored, summary, clean, where

    # -- jobs (progress and cancel of one slow comparison per job id) ------------------------------------------
    def _cbm3d_in_child(self, job: str, image: np.ndarray, sigma: float) -> np.ndarray:
        """CBM3D of ``image`` in a child process, which ``restoration_cancel(job)`` stops at once."""
        with tempfile.TemporaryDirectory(prefix="headlab-cbm3d-") as folder:
            source, target = Path(folder) / "noisy.npy", Path(folder) / "denoised.npy"
            np.save(source, image)
            process = subprocess.Popen([sys.executable, "-c", CBM3D_CHILD, str(source), str(target), repr(sigma)],
                                       cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
            try:
                while True:
                    try:
                        _, errors = process.communicate(timeout=POLL_SECONDS)
                        break
                    except subprocess.TimeoutExpired:
                        with self._jobs_lock:
                            if self._jobs[job]["cancelled"]:
                                raise CancelledError from None
            finally:
                if process.poll() is None:
                    process.kill()
                    process.wait()
            if process.returncode != 0:
                last = (errors.strip().splitlines() or ["no message"])[-1]
                raise ServiceError(f"CBM3D failed ({last}).")
            return np.load(target)

    # -- API ----------------------------------------------------------------------------------------------------
    def understand(self, image: Image.Image | None = None, prompt: str = "", model: str = "") -> dict:
        prompt = self._clean_prompt(prompt)
        array = prepare_image(image).pixels if image is not None else None
        if not prompt:
            return {"prompt": "", "degradation": None, "confidence": None, **self._suggestion(array)}
        restorer = self.model(model)
        return {"prompt": prompt, "model": restorer.name, **self._understanding(restorer, prompt, array)}

    def restore(self, image: Image.Image | None, prompt: str = "", model: str = "",
                reference: Image.Image | None = None, region: str = "",
                region_mask: Image.Image | None = None, heads_off: str = "") -> tuple[Image.Image, dict]:
        _, restored, summary, _, _ = self._restore(image, prompt, model, reference, region, region_mask, heads_off)
        return to_pil(restored), summary

    def restore_compare(self, image: Image.Image | None, prompt: str = "", model: str = "",
                        reference: Image.Image | None = None, region: str = "",
                        region_mask: Image.Image | None = None,
                        heads_off: str = "") -> tuple[Image.Image, Image.Image, Image.Image, dict]:
        array, restored, summary, clean, where = self._restore(image, prompt, model, reference, region, region_mask,
                                                               heads_off)
        degradation = summary["degradation"]
        started = time.perf_counter()
        if degradation in BASELINES:
            baseline_name, baseline = BASELINES[degradation]
            baseline_image = (baseline(array.astype(np.float64)) if where is None
                              else where.apply(array, lambda part: baseline(part.astype(np.float64))))
        else:
            baseline_name, baseline_image = "none (input unchanged)", array
        summary["baseline"] = {"name": baseline_name, "seconds": round(time.perf_counter() - started, 3)}
        if clean is not None:
            summary["baseline"].update(_metrics("", clean, baseline_image, where))
        return to_pil(array), to_pil(restored), to_pil(baseline_image), summary

    def restoration_head_effects(self, model: str = "", tasks: str = "") -> dict:
        restorer = self.model(model)
        if restorer.stack is None:
            raise restorer.no_stack()
        chosen = choose_tasks(tasks, RESTORATION_TASKS, restorer.name)
        probe = Probe()
        atlas, cached = self.effects_cache.get_or_compute(atlas_key(restorer, probe),
                                                     lambda: compute_head_effects(restorer, probe))
        injection = atlas.get("prompt_injection", {})
        return {**select_tasks(atlas, chosen), "prompt_injection": {task: injection[task] for task in chosen
                                                                    if task in injection}, "cached": cached}

    def restoration_region(self, image: Image.Image | None, region: str = "",
                           region_mask: Image.Image | None = None) -> tuple[Image.Image, dict]:
        prepared = prepare_image(image)
        where = self._region(prepared, image.size, region, region_mask)
        if where is None:
            raise ServiceError("Give a region first: a box [x0, y0, x1, y1], words such as 'the bag', or a mask.")
        return to_pil(where.overlay(prepared.pixels)), where.summary()

    def compare_cbm3d(self, image: Image.Image | None, reference: Image.Image | None = None, region: str = "",
                      region_mask: Image.Image | None = None, job: str = "") -> tuple[Image.Image, dict]:
        if job and not JOB_ID.fullmatch(job):
            raise ServiceError("A job id is 1–128 letters, digits, '_', '-' or '.' (or empty).")
        prepared, clean, notes = self._prepared(image, reference)
        where = self._region(prepared, image.size, region, region_mask)
        array = prepared.pixels.astype(np.float64)
        top, bottom, left, right = (0, array.shape[0], 0, array.shape[1]) if where is None else where.bounds()
        if (bottom - top) * (right - left) > MAX_CBM3D_PIXELS:
            raise ServiceError(f"CBM3D would take minutes on {right - left}×{bottom - top} px; compare on a region "
                               f"(a box or words) or a crop of at most {MAX_CBM3D_PIXELS // 1024}×1024 px.")
        sigma = estimate_noise_sigma(array[top:bottom, left:right])  # σ of what CBM3D denoises
        name = STRONGEST_BASELINES["noise"][0]
        job = job or f"anonymous-{threading.get_ident()}"
        with self._jobs_lock:
            if job in self._jobs:
                raise ServiceError(f"Job '{job}' is already running; wait for it or cancel it.")
            expected = CBM3D_SECONDS[0] + CBM3D_SECONDS[1] * (bottom - top) * (right - left) / 1e6
            self._jobs[job] = {"cancelled": False, "started": time.time(), "expected_seconds": expected}
        started = time.perf_counter()

        def run(part: np.ndarray) -> np.ndarray:
            return self._cbm3d_in_child(job, part, sigma)

        try:
            denoised = run(array) if where is None else where.apply(array, run)
        except CancelledError as error:
            raise ServiceError("The CBM3D comparison was cancelled.") from error
        finally:
            with self._jobs_lock:
                del self._jobs[job]
        summary = {"name": name, "sigma": round(sigma, 2), "seconds": round(time.perf_counter() - started, 3),
                   "notes": notes}
        if where is not None:
            summary["region"] = where.summary()
        if clean is not None:
            summary.update(_metrics("", clean, denoised, where))
        return to_pil(denoised), summary

    def restoration_progress(self, job: str = "") -> dict:
        with self._jobs_lock:
            state = self._jobs.get(job)
            if state is None:
                return {"running": False, "elapsed_seconds": 0.0, "expected_seconds": 0.0}
            return {"running": True, "elapsed_seconds": round(time.time() - state["started"], 1),
                    "expected_seconds": round(state["expected_seconds"], 1)}

    def restoration_cancel(self, job: str = "") -> dict:
        with self._jobs_lock:
            state = self._jobs.get(job)
            if state is not None:
                state["cancelled"] = True
            return {"cancelled": state is not None}


def _metrics(prefix: str, clean: np.ndarray, image: np.ndarray, region: Region | None = None) -> dict:
    """PSNR (dB) and SSIM of ``image`` against ``clean``, keys prefixed (e.g. input_psnr); with a region also
    inside it (``region_psnr``) and outside it (``outside_psnr``)."""
    quantised = (np.round(np.clip(image, 0, 1) * 255) / 255).astype(np.float64)  # what the 8-bit image holds
    clean = clean.astype(np.float64)
    key = f"{prefix}_" if prefix else ""
    scores = {key: psnr_ssim(clean, quantised)}
    if region is not None:
        scores[f"{key}region_"] = masked_psnr_ssim(clean, quantised, region.mask)
        if not region.mask.all():
            scores[f"{key}outside_"] = masked_psnr_ssim(clean, quantised, ~region.mask)
    return {f"{name}{metric}": round(min(value, IDENTICAL_PSNR), 3) if metric == "psnr" else round(value, 4)
            for name, (psnr, ssim) in scores.items() for metric, value in (("psnr", psnr), ("ssim", ssim))}

