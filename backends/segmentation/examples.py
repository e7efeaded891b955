"""The panel's example images: held-out generated scenes (never seen in training) with text, click and box queries.

    python -m backends.segmentation.examples    # (re)writes assets/segmentation/examples/
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from backends.segmentation.data import (
    BOX_BOTTOM_RIGHT,
    BOX_TOP_LEFT,
    HELDOUT_SEED_START,
    NEGATIVE,
    POSITIVE,
    make_samples,
)

EXAMPLES_DIR = Path(__file__).resolve().parents[2] / "assets" / "segmentation" / "examples"
SCENE_SIZE = 256
# (seed offset, kinds to draw a query from); chosen to show plural, relation, ordinal, colour, click and box queries.
SCENES = ((3, ("plural",)), (11, ("relation",)), (7, ("ordinal",)), (19, ("colour_category",)), (23, ("points",)),
          (29, ("box",)))


def prompt_strings(prompts: np.ndarray, size: int) -> dict[str, str]:
    """A sample's prompt rows as the API's ``points`` and ``box`` strings (pixels of a size×size image)."""
    points = [[round(float(x) * size, 1), round(float(y) * size, 1), int(label)] for x, y, label in prompts
              if label in (POSITIVE, NEGATIVE)]
    corners = {int(label): (float(x) * size, float(y) * size) for x, y, label in prompts
               if label in (BOX_TOP_LEFT, BOX_BOTTOM_RIGHT)}
    box = [round(v, 1) for v in (*corners[BOX_TOP_LEFT], *corners[BOX_BOTTOM_RIGHT])] if corners else []
    return {"points": json.dumps(points) if points else "", "box": json.dumps(box) if box else ""}


def write_examples(folder: Path = EXAMPLES_DIR) -> list[dict]:
    """Write the example PNGs and examples.json (file, expression, points, box) into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    examples = []
    for offset, kinds in SCENES:
        sample = make_samples(HELDOUT_SEED_START + 900_000 + offset, size=SCENE_SIZE, kinds=kinds)[0]
        name = f"scene_{offset}.png"
        Image.fromarray(sample.image).save(folder / name)
        examples.append({"file": name, "expression": sample.expression, **prompt_strings(sample.prompts, SCENE_SIZE)})
    (folder / "examples.json").write_text(json.dumps(examples, indent=1))
    return examples


if __name__ == "__main__":
    for example in write_examples():
        print(example)
