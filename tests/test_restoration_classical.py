"""Classical baselines, the prompt-free cues that suggest an instruction, and the held-out evaluation that
compares the model with the baselines."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from backends.core.text_encoder import MiniLMEncoder
from backends.restoration.adapters import ASSETS
from backends.restoration.checkpoint import WEIGHTS_FILE, load_models
from backends.restoration.classical import BASELINES, degradation_cues, estimate_noise_sigma
from backends.restoration.evaluate import degraded_case, evaluate_heldout, psnr_ssim
from backends.restoration.images import IMAGES_ENV, export_npz, heldout_images, load_images


@pytest.fixture(scope="module")
def clean() -> np.ndarray:
    return heldout_images(160)["astronaut"]


@pytest.mark.parametrize("task", ["noise", "haze", "rain"])
def test_each_baseline_improves_its_degradation(clean: np.ndarray, task: str):
    degraded = degraded_case(clean, task, 25.0, seed=1)
    _, baseline = BASELINES[task]
    restored = baseline(degraded)
    reference = clean / 255.0
    assert restored.shape == degraded.shape and restored.min() >= 0 and restored.max() <= 1
    assert psnr_ssim(reference, restored)[0] > psnr_ssim(reference, degraded)[0] + 1.0


def test_the_noise_estimate_and_the_cues(clean: np.ndarray):
    noisy = degraded_case(clean, "noise", 25.0, seed=2)
    assert abs(estimate_noise_sigma(noisy) - 25) < 5
    assert degradation_cues(clean / 255.0)["suggested"] == "none"
    for task in ("noise", "haze", "rain"):  # a heuristic: most random draws of each degradation are recognised
        hits = [degradation_cues(degraded_case(clean, task, 25.0, seed))["suggested"] == task for seed in range(4)]
        assert sum(hits) >= 3, task


def test_the_image_archive_round_trips(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    archive = export_npz(tmp_path / "images.npz")
    assert archive.stat().st_size < 20 * 2**20  # small enough to carry to a lent GPU beside the tree
    direct = load_images(["camera", "chelsea"])
    monkeypatch.setenv(IMAGES_ENV, str(archive))
    from_archive = load_images(["camera", "chelsea"])
    assert all(np.array_equal(direct[name], from_archive[name]) for name in direct)
    with pytest.raises(FileNotFoundError):
        load_images(["camera", "not-an-image"])


def test_the_evaluation_compares_the_shipped_model_with_its_baseline_image_by_image():
    models, encoder = load_models(ASSETS / WEIGHTS_FILE), MiniLMEncoder()
    result = evaluate_heldout(models.restorer, models.classifier, lambda sentences: encoder(sentences).pooled,
                              max_side=96, names=("astronaut", "coffee"), cases=("noise25",))
    assert result["images"] == ["astronaut", "coffee"]
    assert set(result["cases"]) == {"noise25", "none_identity"}
    noise = result["cases"]["noise25"]
    assert noise["model_psnr"] > noise["input_psnr"] + 5
    assert noise["margin_db"] == pytest.approx(noise["model_psnr"] - noise["baseline_psnr"])
    assert noise["worst_margin_db"] <= noise["margin_db"] and noise["model_wins"] in (0.0, 0.5, 1.0)
