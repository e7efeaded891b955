"""The panel's example images: held-out generated scenes (never seen in training) and one real photo.

    python -m backends.segmentation.examples    # (re)writes assets/segmentation/examples/
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image
from skimage import data as skdata

from backends.segmentation.data import HELDOUT_SEED_START, make_samples

EXAMPLES_DIR = Path(__file__).resolve().parents[2] / "assets" / "segmentation" / "examples"
SCENE_SIZE = 256
# (seed offset, kinds to draw a query from); chosen to show plural, relation, ordinal and colour queries.
SCENES = ((3, ("plural",)), (11, ("relation",)), (7, ("ordinal",)), (19, ("colour_category",)))


def write_examples(folder: Path = EXAMPLES_DIR) -> list[dict]:
    """Write the example PNGs and examples.json (file, expression, points, box) into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    examples = []
    for offset, kinds in SCENES:
        sample = make_samples(HELDOUT_SEED_START + 900_000 + offset, size=SCENE_SIZE, kinds=kinds)[0]
        name = f"scene_{offset}.png"
        Image.fromarray(sample.image).save(folder / name)
        examples.append({"file": name, "expression": sample.expression, "points": "", "box": ""})
    photo = np.asarray(skdata.coffee())
    Image.fromarray(photo).resize((300, 200), Image.BILINEAR).save(folder / "coffee.png")
    examples.append({"file": "coffee.png", "expression": "", "points": "[[150, 90, 1]]", "box": ""})
    (folder / "examples.json").write_text(json.dumps(examples, indent=1))
    return examples


if __name__ == "__main__":
    for example in write_examples():
        print(example)
