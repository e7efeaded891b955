"""Train the referring segmenter on generated scenes (on the training core of :mod:`backends.core.training`).

    python -m backends.segmentation.train --steps 4000 --out DIR --seed 0 [--minutes 40] [--resume DIR]

Every step draws fresh training scenes (seeds below HELDOUT_SEED_START, Fashion-MNIST's train split) with several
queries each and optimises, all at once:

* the foreground U-Net (BCE + Dice against the union of the items' masks);
* the object encoder's auxiliary category and colour heads (cross-entropy per object);
* the fusion's per-object "referred" logits (BCE against the query's referred items).

With ``--augment``, for photometric variety that the scene generator does not draw, a share of the training scenes
(never the held-out ones) is augmented: items cast soft shadows on the background (never part of an item), and the
whole picture is blurred, JPEG-compressed or resampled through a smaller size, and its tones are changed by the
colour-keeping photometric operations of RandAugment (posterize, contrast, sharpness; ``augment_scene``).

A new model's frozen Fashion-MNIST prior is HeadLab's Guidance-panel classifier (``--fashion-prior``).

With ``--wise-ft A`` (resumed runs only) the weights written at the end are ``(1 − A)·start + A·trained``, the
weight-space average of the model resumed from and the trained one (WiSE-FT, Wortsman et al. 2022), which keeps
most of a fine-tune's gains with less drift from what the start model did well.

Objects are the scenes' true item masks (randomly grown or shrunk by a pixel), and — once the U-Net has warmed up —
for a share of the scenes the connected components of the U-Net's own foreground, matched to the items, so that
the fusion also learns on the objects it will see at inference. Writes into DIR, every ~60 s and at the end:
segmenter.safetensors, segmentation.json (config, steps, runs with their schedules and loss curves; held-out
metrics at the end) and checkpoint.pt (weights, optimizer and step, for ``--resume``). The final weights carry
their scene statistics (``fit_scene_statistics``), by which the service tells pictures unlike the training scenes.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812 - the usual torch alias
from PIL import Image, ImageEnhance, ImageFilter, ImageOps
from safetensors.torch import load_file
from scipy import ndimage

from backends.core.images import jpeg_roundtrip, resample_through
from backends.core.text_encoder import MiniLMEncoder, TextCache
from backends.core.training import Schedule, Trainer, resume_point
from backends.segmentation.data import COLOUR_KEYS, HELDOUT_SEED_START, NO_COLOUR, Item, Sample, make_samples
from backends.segmentation.evaluate import evaluate_heldout
from backends.segmentation.model import (
    CONFIG_NAME,
    WEIGHTS_NAME,
    ImageFeatures,
    Segmenter,
    SegmenterConfig,
    find_objects,
    fit_scene_statistics,
    load_checkpoint,
    save_weights,
)

WARMUP_STEPS = 100
OWN_OBJECTS_AFTER = 300  # steps before the U-Net's own components are used as objects
OWN_OBJECTS_SHARE = 0.4  # share of scenes whose objects are the U-Net's components after that
AUX_WEIGHT = 0.5  # weight of the category and colour losses
IGNORE = -100
SHADOW_SHARE = 0.2  # training scenes whose items cast soft shadows
DEGRADE_SHARE = 0.3  # training scenes blurred, JPEG-compressed or resampled as a whole
TONE_SHARE = 0.3  # training scenes posterized, or with their contrast and sharpness changed
FASHION_CLASSIFIER = Path(__file__).resolve().parents[2] / "assets" / "guidance" / "classifier.safetensors"


def foreground_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """BCE + soft Dice of the item-pixel logits [B, S, S] against the union of item masks."""
    target = target.float()
    bce = F.binary_cross_entropy_with_logits(logits, target)
    probs = torch.sigmoid(logits)
    dice = 1 - (2 * (probs * target).sum((1, 2)) + 1) / (probs.sum((1, 2)) + target.sum((1, 2)) + 1)
    return bce + dice.mean()


def jitter_masks(masks: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Each mask [N, S, S] grown (30 %) or shrunk (20 %) by one pixel, so the encoder tolerates imperfect outlines."""
    if masks.shape[0] == 0:
        return masks
    x = masks[:, None].float()
    grown = F.max_pool2d(x, 3, stride=1, padding=1)[:, 0] > 0.5
    shrunk = -F.max_pool2d(-x, 3, stride=1, padding=1)[:, 0] > 0.5
    roll = torch.rand(masks.shape[0], generator=generator)[:, None, None].to(masks.device)
    jittered = torch.where(roll < 0.3, grown, torch.where(roll < 0.5, shrunk, masks))
    keep_original = jittered.flatten(1).sum(1) < 4  # never shrink an object away
    jittered[keep_original] = masks[keep_original]
    return jittered


def scene_objects(scene: list[Sample], predicted: np.ndarray | None, max_objects: int
                  ) -> tuple[torch.Tensor, list[int]]:
    """Object masks [N, S, S] of a scene and the index of the item each one belongs to (-1: none).

    ``predicted`` (the U-Net's foreground) replaces the true item masks by its components, each matched to the
    item that covers most of it."""
    items = scene[0].items
    if predicted is None:
        return torch.from_numpy(np.stack([item.mask for item in items])), list(range(len(items)))
    masks = find_objects(predicted, max_objects)
    owners = []
    for mask in masks:
        overlaps = [int((mask & item.mask).sum()) for item in items]
        best = int(np.argmax(overlaps))
        owners.append(best if overlaps[best] * 2 > mask.sum() else -1)
    return torch.from_numpy(masks), owners


def cast_shadows(image: np.ndarray, items: list[Item], rng: np.random.Generator) -> np.ndarray:
    """``image`` with soft shadows of most items, 1–6 px away in any direction, darkening only the background."""
    shade = np.ones(image.shape[:2], np.float32)
    for item in items:
        if rng.random() < 0.7:
            offset = rng.integers(1, 7) * rng.choice([-1, 1], 2) * (rng.random(2) < 0.8)
            cast = ndimage.shift(item.mask.astype(np.float32), offset, order=0)
            shade *= 1 - rng.uniform(0.3, 0.6) * ndimage.gaussian_filter(cast, rng.uniform(0.0, 1.5))
    shade[np.logical_or.reduce([item.mask for item in items])] = 1
    return (image * shade[..., None]).astype(np.uint8)


def degrade(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """``image`` blurred (σ 0.4–1.2), JPEG-compressed (quality 25–70) and/or resampled through 50–80 % of its size:
    each with probability ½, at least one."""
    picture = Image.fromarray(image)
    chosen = rng.random(3) < 0.5
    chosen[rng.integers(3)] = True
    if chosen[0]:
        picture = picture.filter(ImageFilter.GaussianBlur(rng.uniform(0.4, 1.2)))
    if chosen[1]:
        picture = jpeg_roundtrip(picture, int(rng.integers(25, 71)))
    if chosen[2]:
        picture = resample_through(picture, max(8, int(picture.width * rng.uniform(0.5, 0.8))))
    return np.asarray(picture, np.uint8).copy()


def change_tones(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """``image`` posterized to 3–4 bits per channel (half the time), otherwise with its contrast scaled by 0.7–1.3
    and its sharpness by 0–2: photometric operations that keep every colour name true."""
    picture = Image.fromarray(image)
    if rng.random() < 0.5:
        picture = ImageOps.posterize(picture, int(rng.integers(3, 5)))
    else:
        picture = ImageEnhance.Contrast(picture).enhance(rng.uniform(0.7, 1.3))
        picture = ImageEnhance.Sharpness(picture).enhance(rng.uniform(0.0, 2.0))
    return np.asarray(picture, np.uint8).copy()


def augment_scene(scene: list[Sample], rng: np.random.Generator) -> list[Sample]:
    """The queries of one training scene on its augmented picture: shadows for SHADOW_SHARE of the scenes, then a
    whole-picture degradation for DEGRADE_SHARE and a change of tones for TONE_SHARE (each independently)."""
    image = scene[0].image
    if rng.random() < SHADOW_SHARE:
        image = cast_shadows(image, scene[0].items, rng)
    if rng.random() < DEGRADE_SHARE:
        image = degrade(image, rng)
    if rng.random() < TONE_SHARE:
        image = change_tones(image, rng)
    return scene if image is scene[0].image else [dataclasses.replace(sample, image=image) for sample in scene]


def average_weights(model: Segmenter, start: dict[str, torch.Tensor], weight: float) -> None:
    """Set ``model``'s floating-point weights to ``(1 − weight)·start + weight·model`` in place."""
    with torch.no_grad():
        for name, value in model.state_dict().items():
            if value.is_floating_point():
                value.mul_(weight).add_(start[name].to(value.device), alpha=1 - weight)


def write_json(path: Path, payload: dict) -> None:
    """Write ``payload`` as pretty JSON atomically."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(payload, indent=2))
    os.replace(tmp, path)


def training_step(model: Segmenter, texts: TextCache, scenes: list[list[Sample]], step: int,
                  generator: torch.Generator, rng: np.random.Generator) -> tuple[torch.Tensor, dict]:
    """The loss of one batch of scenes (each a list of queries on one scene) and its parts."""
    device = model.pixel_mean.device
    images = torch.from_numpy(np.stack([scene[0].image for scene in scenes])).to(device).permute(0, 3, 1, 2)
    images = images.float() / 255
    union = torch.from_numpy(np.stack([np.logical_or.reduce([it.mask for it in scene[0].items]) for scene in scenes]))
    fg_logits = model.foreground(model.normalise(images))
    fg_loss = foreground_loss(fg_logits, union.to(device))
    predicted = (fg_logits.detach() > 0).cpu().numpy()

    features: list[ImageFeatures] = []
    categories, colours, query_features, targets, queries = [], [], [], [], []
    for index, scene in enumerate(scenes):
        use_own = step >= OWN_OBJECTS_AFTER and rng.random() < OWN_OBJECTS_SHARE
        masks, owners = scene_objects(scene, predicted[index] if use_own else None, model.config.max_objects)
        masks = masks.to(device)
        if not use_own:
            masks = jitter_masks(masks, generator)
        items = scene[0].items
        encoded = model.embed_objects(images[index], masks)
        features.append(encoded)
        categories += [items[o].category if o >= 0 else IGNORE for o in owners]
        colours += [COLOUR_KEYS.index(items[o].colour) if o >= 0 and items[o].colour != NO_COLOUR else IGNORE
                    for o in owners]
        for sample in scene:
            referred = {i for i, item in enumerate(items) if (item.mask & sample.mask).any()}
            targets.append([float(o in referred) for o in owners])
            query_features.append(encoded)
            queries.append(sample)
    text = texts([q.expression for q in queries])
    prompts = torch.from_numpy(np.stack([q.prompts for q in queries])).to(device)
    out = model.decode(query_features, text.tokens, text.mask, prompts)
    target = torch.zeros_like(out.logits)
    for row, values in enumerate(targets):
        target[row, :len(values)] = torch.tensor(values)
    per_object = F.binary_cross_entropy_with_logits(out.logits, target, reduction="none")
    referred_loss = (per_object * out.object_mask).sum() / out.object_mask.sum().clamp(min=1)
    category_logits = torch.cat([f.category_logits for f in features])
    colour_logits = torch.cat([f.colour_logits for f in features])
    category_labels = torch.tensor(categories, device=device)
    aux = F.cross_entropy(category_logits, category_labels, ignore_index=IGNORE) + \
        F.cross_entropy(colour_logits, torch.tensor(colours, device=device), ignore_index=IGNORE)
    loss = referred_loss + fg_loss + AUX_WEIGHT * aux
    with torch.no_grad():
        decided = ((out.logits > 0).float() == target) | ~out.object_mask
        exact = decided.all(1).float().mean()
        category_accuracy = (category_logits.argmax(1) == category_labels)[category_labels != IGNORE]
    return loss, {"referred": referred_loss.item(), "foreground": fg_loss.item(), "aux": aux.item(),
                  "exact": exact.item(), "category_acc": category_accuracy.float().mean().item()}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--steps", type=int, default=4000, help="steps of the learning-rate schedule")
    parser.add_argument("--minutes", type=float, default=None,
                        help="stop after this much training time (evaluation excluded); --resume continues")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--resume", type=Path, default=None,
                        help="run directory (or its segmenter.safetensors) to continue from")
    parser.add_argument("--scenes", type=int, default=8, help="scenes per step")
    parser.add_argument("--queries-per-scene", type=int, default=8)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--eval-samples", type=int, default=1000)
    parser.add_argument("--augment", action="store_true",
                        help=f"cast shadows on {SHADOW_SHARE:.0%}, blur/JPEG/resampling on {DEGRADE_SHARE:.0%} and "
                             f"tone changes on {TONE_SHARE:.0%} of the training scenes")
    parser.add_argument("--wise-ft", type=float, default=1.0,
                        help="weight of the trained model in the final average with the resumed one (1: none)")
    parser.add_argument("--scene-statistics", type=int, default=1000,
                        help="training scenes the final weights' scene statistics are fitted on (half as many "
                             "held-out ones set the radius)")
    parser.add_argument("--fashion-prior", type=Path, default=FASHION_CLASSIFIER,
                        help="frozen Fashion-MNIST classifier weights for a new model (trained by the Guidance panel)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    """Train, save, evaluate; returns the metadata written to segmentation.json."""
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    args.out.mkdir(parents=True, exist_ok=True)
    weights_path, json_path = args.out / WEIGHTS_NAME, args.out / CONFIG_NAME
    if args.wise_ft != 1.0 and not args.resume:
        raise SystemExit("--wise-ft averages with the model resumed from: give --resume")
    if args.resume:
        model, previous = load_checkpoint(args.resume / WEIGHTS_NAME if args.resume.is_dir() else args.resume)
        history, earlier_queries = previous.get("runs", []), int(previous.get("queries_seen", 0))
    else:
        model, previous, history, earlier_queries = Segmenter(SegmenterConfig()), {}, [], 0
        model.fashion.load_state_dict({k: v.float() for k, v in load_file(str(args.fashion_prior)).items()})
    start = {k: v.detach().clone() for k, v in model.state_dict().items()}
    point = resume_point(args.resume, int(previous.get("steps", 0)),
                         lambda first: Schedule(args.lr, first, first + args.steps, WARMUP_STEPS))
    model.to(args.device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.02)
    trainer = Trainer({"model": model}, optimizer, point.schedule, args.out, log=lambda line: print(line, flush=True))
    if point.checkpoint is not None:
        trainer.restore(point.checkpoint)
    first_step = trainer.step
    texts = TextCache(MiniLMEncoder().to(args.device))
    params = sum(p.numel() for p in model.parameters())
    print(f"segmenter: {params / 1e6:.2f} M parameters, {args.scenes} scenes × {args.queries_per_scene} queries per "
          f"step, device {args.device}, steps {first_step}–{trainer.schedule.last_step}, starting at {first_step}",
          flush=True)

    def metadata(seconds: float) -> dict:
        run = {"seed": args.seed, "device": args.device, "first_step": first_step, "last_step": trainer.step,
               "wall_seconds": round(seconds, 1), "scenes_per_step": args.scenes,
               "queries_per_scene": args.queries_per_scene, "schedule": trainer.schedule.to_dict(),
               "threads": args.threads, "resumed_from": str(args.resume) if args.resume else None,
               "augmentation": {"shadow_share": SHADOW_SHARE, "degrade_share": DEGRADE_SHARE,
                                "tone_share": TONE_SHARE} if args.augment else None,
               "wise_ft": args.wise_ft, "loss_curve": trainer.curve}
        return {"config": model.config.to_dict(), "steps": trainer.step,
                "queries_seen": earlier_queries + (trainer.step - first_step) * args.scenes * args.queries_per_scene,
                "parameters": params, "weights": WEIGHTS_NAME, "text_encoder": "all-MiniLM-L6-v2 (frozen)",
                "fashion_prior": "assets/guidance/classifier.safetensors (frozen)",
                "torch": torch.__version__, "python": platform.python_version(), "runs": [*history, run]}

    def step_loss(step: int) -> tuple[torch.Tensor, dict]:
        rng = np.random.default_rng([args.seed, step])
        generator = torch.Generator().manual_seed(args.seed * 1_000_003 + step)
        scene_seed = (args.seed * 100_000_019 + step * args.scenes) % (HELDOUT_SEED_START - args.scenes)
        scenes = [make_samples(scene_seed + i, args.queries_per_scene) for i in range(args.scenes)]
        if args.augment:
            scenes = [augment_scene(scene, rng) for scene in scenes]
        return training_step(model, texts, scenes, step, generator, rng)

    def write_files(seconds: float) -> None:
        save_weights(model, weights_path)
        write_json(json_path, metadata(seconds))

    seconds = trainer.run(step_loss, args.minutes, write_files)
    if args.wise_ft != 1.0:
        average_weights(model, start, args.wise_ft)
    fit_scene_statistics(model, args.scene_statistics)
    write_files(seconds)
    meta = metadata(seconds)
    print(f"trained {trainer.step - first_step} steps in {seconds:.0f} s; evaluating on {args.eval_samples} held-out "
          f"queries", flush=True)
    model.eval()
    meta["heldout"] = evaluate_heldout(model, texts, args.eval_samples)
    write_json(json_path, meta)
    print(json.dumps(meta["heldout"], indent=1), flush=True)
    return meta


if __name__ == "__main__":
    main()
