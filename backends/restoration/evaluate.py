"""Held-out evaluation: restoration quality per task against classical baselines, prompt sensitivity and
prompt-understanding accuracy on paraphrases that are not among the training templates.

Used by the training script (final evaluation) and by the benchmarks.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
import torch
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from backends.restoration.anchors import InstructionAnchors
from backends.restoration.classical import BASELINES, STRONGEST_BASELINES
from backends.restoration.degrade import degrade
from backends.restoration.images import HELDOUT_NAMES, heldout_images
from backends.restoration.model import PromptClassifier, TextPromptIR
from backends.restoration.prompts import RESTORATION_TASKS, TASKS, heldout_paraphrases

Embed = Callable[[list[str]], torch.Tensor]

# evaluation cases: (name, task, noise σ)
CASES = (("noise15", "noise", 15.0), ("noise25", "noise", 25.0), ("noise50", "noise", 50.0),
         ("haze", "haze", None), ("rain", "rain", None))
WRONG_TASK = {"noise": "haze", "haze": "rain", "rain": "noise"}


def psnr_ssim(reference: np.ndarray, image: np.ndarray) -> tuple[float, float]:
    """RGB PSNR (dB, +inf for identical images) and SSIM of float H×W×3 images in [0, 1] (scikit-image metrics)."""
    with np.errstate(divide="ignore"):  # identical images: PSNR is +inf
        psnr = peak_signal_noise_ratio(reference, image, data_range=1.0)
    ssim = structural_similarity(reference, image, data_range=1.0, channel_axis=-1)
    return float(psnr), float(ssim)


def to_tensor(image: np.ndarray) -> torch.Tensor:
    """H×W×3 float/uint8 array → 1×3×H×W float tensor in [0, 1] (CPU)."""
    array = image.astype(np.float32) / 255.0 if image.dtype == np.uint8 else image.astype(np.float32)
    return torch.from_numpy(array).permute(2, 0, 1).unsqueeze(0)


def to_array(image: torch.Tensor) -> np.ndarray:
    """1×3×H×W tensor → H×W×3 float64 array clipped to [0, 1]."""
    return image[0].detach().float().clamp(0, 1).permute(1, 2, 0).cpu().numpy().astype(np.float64)


@torch.no_grad()
def run_restorer(restorer: TextPromptIR, image: torch.Tensor, embedding: torch.Tensor) -> torch.Tensor:
    """Restore a 1×3×H×W tensor with one sentence embedding (384-d), in fp32 on the restorer's device."""
    device = next(restorer.parameters()).device
    return restorer(image.to(device), embedding.view(1, -1).to(device)).clamp(0, 1)


def degraded_case(clean: np.ndarray, task: str, sigma: float | None, seed: int) -> np.ndarray:
    """Deterministically degraded copy of a clean H×W×3 uint8 image (as float64 in [0, 1])."""
    generator = torch.Generator().manual_seed(seed)
    return to_array(degrade(to_tensor(clean), task, generator, sigma=sigma))


@torch.no_grad()
def prompt_accuracy(classifier: PromptClassifier, embed: Embed) -> dict:
    """Accuracy of the prompt classifier on the held-out paraphrases, overall and per task."""
    classifier.eval()
    paraphrases = heldout_paraphrases()
    per_task = {}
    correct_total = count_total = 0
    for task_index, task in enumerate(TASKS):
        embeddings = embed(paraphrases[task])
        device = next(classifier.parameters()).device
        predicted = classifier(embeddings.to(device)).argmax(-1).cpu()
        correct = int((predicted == task_index).sum())
        per_task[task] = correct / len(paraphrases[task])
        correct_total += correct
        count_total += len(paraphrases[task])
    return {"accuracy": correct_total / count_total, "per_task": per_task, "count": count_total}


def evaluate_heldout(restorer: TextPromptIR, classifier: PromptClassifier, embed: Embed, max_side: int = 512,
                     with_baselines: bool = True, names: tuple[str, ...] = HELDOUT_NAMES,
                     cases: tuple[str, ...] | None = None, anchors: InstructionAnchors | None = None,
                     strongest: bool = False, first_index: int = 0) -> dict:
    """Mean PSNR/SSIM per case (all ``CASES`` unless ``cases`` names some) on the held-out images ``names``: input,
    model (held-out paraphrase), model with a wrong instruction, and the fast classical baseline (with the mean and
    worst of the model's margin over it, the image of the worst and the share of images won); the share of images
    the model leaves below their degraded input; identity fidelity with an off-task instruction; prompt accuracy.
    With ``strongest`` also the strongest classical method where it is a different one (CBM3D for noise, given the
    true σ) and the margins over it (``strongest_`` keys). With ``anchors`` the restorer is steered as the app steers
    it (nearest training instruction of the understood task); without, by the paraphrase's own embedding.
    ``first_index`` is the position of ``names[0]`` in a larger set split into slices (it picks the seeds and the
    paraphrases, so slices evaluated apart give the whole set's numbers)."""
    started = time.time()
    restorer.eval()
    paraphrases = heldout_paraphrases()

    def steer(sentences: list[str]) -> list[torch.Tensor]:
        embeddings = list(embed(sentences))
        return [anchors.steer(classifier, e)[0] for e in embeddings] if anchors else embeddings

    images = heldout_images(max_side, names)
    rows: dict[str, dict[str, list[float]]] = {name: {} for name, _, _ in CASES if cases is None or name in cases}
    for image_index, clean_uint8 in enumerate(images.values(), start=first_index):
        clean = clean_uint8.astype(np.float64) / 255.0
        for case_index, (case, task, sigma) in enumerate(CASES):
            if case not in rows:
                continue
            degraded = degraded_case(clean_uint8, task, sigma, seed=1000 * image_index + case_index)
            right = paraphrases[task][image_index % len(paraphrases[task])]
            wrong = paraphrases[WRONG_TASK[task]][image_index % len(paraphrases[WRONG_TASK[task]])]
            embeddings = steer([right, wrong])
            outputs = {
                "input": degraded,
                "model": to_array(run_restorer(restorer, to_tensor(degraded), embeddings[0])),
                "model_wrong_prompt": to_array(run_restorer(restorer, to_tensor(degraded), embeddings[1])),
            }
            if with_baselines:
                _, baseline = BASELINES[task]
                outputs["baseline"] = baseline(degraded, sigma) if task == "noise" else baseline(degraded)
            if strongest and task in STRONGEST_BASELINES:
                outputs["strongest"] = STRONGEST_BASELINES[task][1](degraded, sigma)
            for key, output in outputs.items():
                psnr, ssim = psnr_ssim(clean, output)
                rows[case].setdefault(f"{key}_psnr", []).append(psnr)
                rows[case].setdefault(f"{key}_ssim", []).append(ssim)
        off_task = steer([paraphrases["none"][image_index % len(paraphrases["none"])]])[0]
        identity = to_array(run_restorer(restorer, to_tensor(clean_uint8), off_task))
        rows.setdefault("none_identity", {}).setdefault("model_psnr", []).append(psnr_ssim(clean, identity)[0])
    summary = {case: {key: float(np.mean(values)) for key, values in metrics.items()} for case, metrics in rows.items()}
    for case in (name for name, _, _ in CASES if name in rows):
        below = np.less(rows[case]["model_psnr"], rows[case]["input_psnr"])
        summary[case]["model_below_input"] = float(below.mean())
        for prefix, baseline_key in (("", "baseline_psnr"), ("strongest_", "strongest_psnr")):
            if baseline_key not in rows[case]:
                continue
            margins = np.subtract(rows[case]["model_psnr"], rows[case][baseline_key])
            summary[case].update({f"{prefix}margin_db": float(margins.mean()),
                                  f"{prefix}worst_margin_db": float(margins.min()),
                                  f"{prefix}model_wins": float((margins > 0).mean()),
                                  f"{prefix}worst_image": list(images)[int(margins.argmin())]})
    return {
        "images": list(images),
        "max_side": max_side,
        "baselines": {task: BASELINES[task][0] for task in RESTORATION_TASKS} if with_baselines else None,
        "strongest_baselines": ({task: name for task, (name, _) in STRONGEST_BASELINES.items()}
                                if with_baselines and strongest else None),
        "cases": summary,
        "prompt_understanding": prompt_accuracy(classifier, embed),
        "seconds": time.time() - started,
    }
