"""Classical baselines, one per degradation (float RGB H×W×3 images in [0, 1]).

* noise: non-local means (scikit-image, fast mode, told the true σ when known, else estimated) as the fast baseline,
  and CBM3D (the ``bm3d`` package, opponent colour space) as the strongest classical one (~16 s per 512² image);
* haze: dark channel prior (He et al. 2009) with guided-filter refinement of the transmission;
* rain: guided-filter decomposition: the low-pass base keeps the scene, bright thin excursions of the detail layer
  (rain streaks add light) are clipped away.

``degradation_cues`` measures the same phenomena without a prompt (noise level, dark-channel haze, thin bright
near-vertical streaks) to suggest an instruction when the user gives none.
"""

from __future__ import annotations

import bm3d
import numpy as np
from scipy import ndimage
from skimage.restoration import denoise_nl_means

NOISE_KERNEL = np.array([[1, -2, 1], [-2, 4, -2], [1, -2, 1]], np.float64)
# cue thresholds, set on held-out and training images (clean vs degraded)
NOISE_CUE_SIGMA = 12.0
HAZE_CUE_DARK = 0.3
RAIN_CUE_SCORE = 0.7


def box_mean(image: np.ndarray, radius: int) -> np.ndarray:
    """Mean over a (2r+1)² window per channel (reflect borders)."""
    size = (2 * radius + 1, 2 * radius + 1) + (1,) * (image.ndim - 2)
    return ndimage.uniform_filter(image, size=size, mode="reflect")


def guided_filter(guide: np.ndarray, source: np.ndarray, radius: int, eps: float) -> np.ndarray:
    """He et al.'s guided filter with a grayscale guide (H×W) on a H×W or H×W×C source."""
    if source.ndim == 3:
        guide = guide[..., None]
    mean_guide = box_mean(guide, radius)
    mean_source = box_mean(source, radius)
    covariance = box_mean(guide * source, radius) - mean_guide * mean_source
    variance = box_mean(guide * guide, radius) - mean_guide**2
    a = covariance / (variance + eps)
    b = mean_source - a * mean_guide
    return box_mean(a, radius) * guide + box_mean(b, radius)


def _gray(image: np.ndarray) -> np.ndarray:
    return image @ np.array([0.299, 0.587, 0.114])


def estimate_noise_sigma(image: np.ndarray) -> float:
    """Gaussian noise σ on the 0–255 scale (Immerkær's fast estimator, mean over channels)."""
    values = []
    for channel in np.moveaxis(image, -1, 0):
        response = ndimage.convolve(channel, NOISE_KERNEL, mode="reflect")[1:-1, 1:-1]
        values.append(np.sqrt(np.pi / 2) * np.abs(response).mean() / 6)
    return float(np.mean(values)) * 255


def denoise_nlm(image: np.ndarray, sigma: float | None = None) -> np.ndarray:
    """Non-local means; ``sigma`` on the 0–255 scale (estimated from the image when None)."""
    sigma01 = (sigma if sigma is not None else estimate_noise_sigma(image)) / 255.0
    restored = denoise_nl_means(image, h=0.8 * sigma01, sigma=sigma01, patch_size=5, patch_distance=6,
                                fast_mode=True, channel_axis=-1)
    return np.clip(restored, 0, 1)


def denoise_cbm3d(image: np.ndarray, sigma: float | None = None) -> np.ndarray:
    """CBM3D (``bm3d.bm3d_rgb``); ``sigma`` on the 0–255 scale (estimated from the image when None)."""
    sigma01 = (sigma if sigma is not None else estimate_noise_sigma(image)) / 255.0
    return np.clip(bm3d.bm3d_rgb(image, max(sigma01, 1e-3)), 0, 1)


def dehaze_dark_channel(image: np.ndarray, patch: int = 15, omega: float = 0.95, t_min: float = 0.1) -> np.ndarray:
    """Dark channel prior dehazing with guided-filter transmission refinement."""
    dark = ndimage.minimum_filter(image.min(axis=2), size=patch, mode="nearest")
    count = max(1, dark.size // 1000)
    brightest = np.argpartition(dark.ravel(), -count)[-count:]
    airlight = image.reshape(-1, 3)[brightest].max(axis=0).clip(0.05, 1)
    normalised_dark = ndimage.minimum_filter((image / airlight).min(axis=2), size=patch, mode="nearest")
    transmission = 1 - omega * normalised_dark
    radius = max(8, min(image.shape[:2]) // 20)
    transmission = guided_filter(_gray(image), transmission, radius, 1e-3).clip(t_min, 1)
    return np.clip((image - airlight) / transmission[..., None] + airlight, 0, 1)


def derain_guided(image: np.ndarray, radius: int = 4, eps: float = 0.02, threshold: float = 0.01) -> np.ndarray:
    """Guided-filter low-pass base plus the detail layer with its bright streak-like excursions clipped."""
    base = guided_filter(_gray(image), image, radius, eps)
    detail = image - base
    bright = _gray(detail)[..., None]
    return np.clip(base + np.where(bright > threshold, np.minimum(detail, threshold), detail), 0, 1)


def degradation_cues(image: np.ndarray) -> dict:
    """Prompt-free cues: noise σ, median dark channel (haze), thin bright near-vertical streaks (rain), and the
    degradation they suggest ('none' when nothing stands out)."""
    gray = _gray(image)
    sigma = estimate_noise_sigma(image)
    dark = float(np.median(ndimage.minimum_filter(image.min(axis=2), size=15, mode="nearest")))
    narrow_across = gray - ndimage.grey_opening(gray, size=(1, 5))
    narrow_along = gray - ndimage.grey_opening(gray, size=(5, 1))
    streaks = float(np.mean(np.clip(narrow_across - narrow_along, 0, None))) * 100 - 0.15 * sigma
    if dark > HAZE_CUE_DARK:
        suggested = "haze"
    elif sigma > NOISE_CUE_SIGMA:
        suggested = "noise"
    elif streaks > RAIN_CUE_SCORE:
        suggested = "rain"
    else:
        suggested = "none"
    return {"noise_sigma": round(sigma, 2), "dark_channel": round(dark, 4), "streak_score": round(streaks, 3),
            "suggested": suggested}


# the fast classical baseline of each degradation (shown next to every restoration)
BASELINES = {
    "noise": ("non-local means", denoise_nlm),
    "haze": ("dark channel prior", dehaze_dark_channel),
    "rain": ("guided-filter low-pass", derain_guided),
}
# the strongest classical method of each degradation, where it is not the fast one (slow: run on request)
STRONGEST_BASELINES = {"noise": ("CBM3D", denoise_cbm3d)}
