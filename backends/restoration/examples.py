"""The panel's examples: held-out images (never trained on), degraded deterministically, with their clean reference.

    python -m backends.restoration.examples   # writes assets/restoration/examples/*.png and examples.json
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from backends.restoration.adapters import ASSETS
from backends.restoration.evaluate import degraded_case
from backends.restoration.images import heldout_images

EXAMPLES_DIR = ASSETS / "examples"
EXAMPLE_SIDE = 256
# (image, task, noise σ, instruction shown with it); the instructions are held-out paraphrases, a plain template,
# a deliberately wrong instruction (prompt sensitivity) and an empty one (suggestion)
EXAMPLES = (
    ("astronaut", "noise", 25.0, "Could you tidy up the fuzzy dots all over my snapshot?"),
    ("coffee", "haze", None, "Everything looks washed out by fog, bring back the details"),
    ("flower", "rain", None, "It was pouring when I took this, get the streaks out"),
    ("grace_hopper", "noise", 50.0, "remove the noise"),
    ("astronaut", "rain", None, "please remove the haze"),
    ("coffee", "noise", 15.0, ""),
)


def write_examples(folder: Path = EXAMPLES_DIR) -> list[dict]:
    """Write each example's degraded input and clean reference as PNG, and examples.json listing them."""
    folder.mkdir(parents=True, exist_ok=True)
    images = heldout_images(EXAMPLE_SIDE)
    listing = []
    for index, (name, task, sigma, prompt) in enumerate(EXAMPLES):
        clean = images[name]
        degraded = degraded_case(clean, task, sigma, seed=7000 + index)
        label = f"{name}_{task}{int(sigma) if sigma else ''}"
        Image.fromarray((degraded * 255).round().astype(np.uint8)).save(folder / f"{label}.png", optimize=True)
        reference = folder / f"{name}_clean.png"
        if not reference.exists():
            Image.fromarray(clean).save(reference, optimize=True)
        listing.append({"input": f"{label}.png", "reference": reference.name, "prompt": prompt, "image": name,
                        "degradation": task, "sigma": sigma})
    (folder / "examples.json").write_text(json.dumps(listing, indent=1))
    return listing


if __name__ == "__main__":
    for example in write_examples():
        print(example)
