"""Natural training and held-out images that ship inside packages: PyPI (scikit-image, scikit-learn, matplotlib) and
Debian (``opencv-doc`` sample photos, ``mate-backgrounds`` nature photos; ``make restoration-data`` installs them).

Whole images are held out for evaluation: ``HELDOUT_NAMES`` (the benchmark set) and ``NEW_PHOTO_NAMES`` (every
other Debian photo in name order: a second, larger set of scenes unlike the PyPI samples). Everything loads offline.
``export_npz`` writes the trainer's images into one archive (PNG bytes) that ``load_images`` reads instead when
``HEADLAB_RESTORATION_IMAGES`` names it, for machines whose packages lack a sample file.
"""

from __future__ import annotations

import io
import os
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

HELDOUT_NAMES = ("astronaut", "coffee", "grace_hopper", "flower")
OPENCV_SAMPLES = Path("/usr/share/doc/opencv-doc/examples")
MATE_NATURE = Path("/usr/share/backgrounds/mate/nature")
DEBIAN_MAX_SIDE = 1024  # Debian photos (wallpapers up to 2560 px) are reduced by an integer factor to at most this
IMAGES_ENV = "HEADLAB_RESTORATION_IMAGES"


def _skimage(name: str) -> Callable[[], np.ndarray]:
    def load() -> np.ndarray:
        import skimage.data

        return getattr(skimage.data, name)()

    return load


def _halved(load_full: Callable[[], np.ndarray]) -> Callable[[], np.ndarray]:
    def load() -> np.ndarray:
        return np.asarray(Image.fromarray(load_full()).reduce(2))

    return load


def _stereo_left() -> np.ndarray:
    import skimage.data

    return skimage.data.stereo_motorcycle()[0]


def _sklearn(filename: str) -> Callable[[], np.ndarray]:
    def load() -> np.ndarray:
        import sklearn.datasets

        return np.asarray(Image.open(Path(sklearn.datasets.__file__).parent / "images" / filename).convert("RGB"))

    return load


def _debian(path: Path) -> Callable[[], np.ndarray]:
    def load() -> np.ndarray:
        image = Image.open(path).convert("RGB")
        return np.asarray(image.reduce(max(1, -(-max(image.size) // DEBIAN_MAX_SIDE))))

    return load


def _matplotlib(filename: str) -> Callable[[], np.ndarray]:
    def load() -> np.ndarray:
        import matplotlib

        return np.asarray(Image.open(Path(matplotlib.get_data_path()) / "sample_data" / filename).convert("RGB"))

    return load


_SOURCES: dict[str, Callable[[], np.ndarray]] = {
    # held out (whole images, evaluation only)
    "astronaut": _skimage("astronaut"),
    "coffee": _skimage("coffee"),
    "grace_hopper": _matplotlib("grace_hopper.jpg"),
    "flower": _sklearn("flower.jpg"),
    # training, colour
    "chelsea": _skimage("chelsea"),
    "rocket": _skimage("rocket"),
    "hubble_deep_field": _skimage("hubble_deep_field"),
    "immunohistochemistry": _skimage("immunohistochemistry"),
    "retina": _halved(_skimage("retina")),
    "motorcycle": _stereo_left,
    "china": _sklearn("china.jpg"),
    "colorwheel": _skimage("colorwheel"),
    # training, grayscale (tinted at sampling time)
    "camera": _skimage("camera"),
    "brick": _skimage("brick"),
    "grass": _skimage("grass"),
    "gravel": _skimage("gravel"),
    "moon": _skimage("moon"),
    "coins": _skimage("coins"),
    "clock": _skimage("clock"),
    "page": _skimage("page"),
    "text": _skimage("text"),
    "cell": _skimage("cell"),
    # Debian photos: every other one in name order is held out (NEW_PHOTO_NAMES), the rest train
    **{f"opencv_{path.stem.lower()}": _debian(OPENCV_SAMPLES / path) for path in map(Path, (
        "data/aero1.jpg", "data/aloeL.jpg", "data/apple.jpg", "data/baboon.jpg", "data/board.jpg",
        "data/building.jpg", "data/butterfly.jpg", "data/chicky_512.png", "data/fruits.jpg", "data/graf1.png",
        "data/home.jpg", "data/leuvenA.jpg", "data/messi5.jpg", "data/orange.jpg", "alphamat/input_images/plant.jpg",
        "data/rubberwhale1.png", "data/smarties.png", "data/squirrel_cls.jpg", "data/stuff.jpg"))},
    **{f"mate_{name.lower()}": _debian(MATE_NATURE / f"{name}.jpg") for name in (
        "Aqua", "Blinds", "Dune", "FreshFlower", "Garden", "GreenMeadow", "LadyBird", "RainDrops", "Storm", "TwoWings",
        "Wood", "YellowFlower")},
}
NEW_PHOTO_NAMES = tuple(name for prefix in ("opencv_", "mate_")
                        for name in [n for n in _SOURCES if n.startswith(prefix)][::2])


def _as_rgb_uint8(image: np.ndarray) -> np.ndarray:
    """Any 2-D or 3-D uint8 array as H×W×3 uint8 (grayscale replicated, alpha dropped)."""
    image = np.asarray(image)
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=-1)
    return np.ascontiguousarray(image[..., :3].astype(np.uint8))


def _from_npz(path: str | Path) -> dict[str, np.ndarray]:
    with np.load(path) as archive:
        return {name: _as_rgb_uint8(np.asarray(Image.open(io.BytesIO(archive[name].tobytes())))) for name in archive}


def load_images(names: list[str] | tuple[str, ...] | None = None, skip_missing: bool = False) -> dict[str, np.ndarray]:
    """Images by name as H×W×3 uint8; from the archive named by ``HEADLAB_RESTORATION_IMAGES`` when set.

    With ``skip_missing``, images that this machine's packages cannot provide are left out (with a warning).
    """
    names = tuple(names) if names is not None else tuple(_SOURCES)
    archive = os.environ.get(IMAGES_ENV)
    if archive:
        available = _from_npz(archive)
        loaders = {name: (lambda image=available[name]: image) for name in names if name in available}
    else:
        loaders = {name: _SOURCES[name] for name in names}
    images = {}
    for name in names:
        try:
            if name not in loaders:
                raise FileNotFoundError(f"{archive} lacks {name}")
            images[name] = _as_rgb_uint8(loaders[name]())
        except Exception as error:  # a sample file missing from this machine's packages
            if not skip_missing:
                raise
            warnings.warn(f"restoration image {name!r} unavailable ({error}); skipped", stacklevel=2)
    return images


def training_names() -> list[str]:
    """Names of the images used for training (every image except the held-out ones)."""
    return [name for name in _SOURCES if name not in HELDOUT_NAMES + NEW_PHOTO_NAMES]


def heldout_images(max_side: int = 512, names: tuple[str, ...] = HELDOUT_NAMES) -> dict[str, np.ndarray]:
    """Held-out images (the benchmark set unless ``names`` says otherwise; those this machine lacks are left out),
    centre-cropped to at most ``max_side`` pixels per side, as H×W×3 uint8."""
    images = load_images(names, skip_missing=True)
    return {name: _centre_crop(image, max_side) for name, image in images.items()}


def _centre_crop(image: np.ndarray, max_side: int) -> np.ndarray:
    height, width = image.shape[:2]
    top, left = max(0, (height - max_side) // 2), max(0, (width - max_side) // 2)
    return image[top:top + max_side, left:left + max_side]


def export_npz(path: str | Path) -> Path:
    """Write what the trainer reads (training and benchmark held-out images this machine has) as PNG bytes into one
    .npz archive."""
    path = Path(path)
    encoded = {}
    for name, image in load_images([*training_names(), *HELDOUT_NAMES], skip_missing=True).items():
        buffer = io.BytesIO()
        is_gray = bool((image == image[..., :1]).all())
        Image.fromarray(image[..., 0] if is_gray else image).save(buffer, format="PNG", optimize=True)
        encoded[name] = np.frombuffer(buffer.getvalue(), dtype=np.uint8)
    np.savez(path, **encoded)
    return path


if __name__ == "__main__":
    import sys

    target = export_npz(sys.argv[1] if len(sys.argv) > 1 else "restoration_images.npz")
    print(f"wrote {target} ({target.stat().st_size / 2**20:.1f} MiB)")
