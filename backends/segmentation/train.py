"""Train the referring segmenter on generated scenes within a time budget.

    python -m backends.segmentation.train --device cuda --minutes 6.5 --out DIR --seed 0 [--resume CKPT]

Writes into DIR: segmenter.safetensors (weights, every ~60 s and at the end) and segmentation.json (config,
steps, wall time, loss curve, held-out metrics). ``--resume`` loads weights from a segmenter.safetensors (and the
segmentation.json beside it) and continues counting steps and drawing fresh scenes from where that run stopped.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812 - the usual torch alias
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from backends.core.text_encoder import MiniLMEncoder
from backends.segmentation.data import HELDOUT_SEED_START, background_photos, fashion_items, make_samples
from backends.segmentation.evaluate import evaluate_heldout, run_model
from backends.segmentation.model import (
    CONFIG_NAME,
    WEIGHTS_NAME,
    Segmenter,
    SegmenterConfig,
    SegmenterOutput,
    load_checkpoint,
    save_weights,
)

SAVE_EVERY_S = 60.0
LOG_EVERY_S = 15.0
WARMUP_STEPS = 200
WARMUP_SHARE = 0.03  # a slow run (CPU) ends its warm-up after this share of its budget, even before WARMUP_STEPS


class SceneStream(IterableDataset):
    """Endless batches of generated samples; batch b always holds the same scenes (seeded by run seed and b)."""

    def __init__(self, seed: int, batch_size: int, queries_per_scene: int, first_batch: int):
        super().__init__()
        self.seed, self.batch_size, self.queries = seed, batch_size, queries_per_scene
        self.first_batch = first_batch

    def batch(self, index: int) -> dict:
        """The samples of batch ``index`` as arrays (images uint8, masks bool, prompts) and expressions."""
        scenes = math.ceil(self.batch_size / self.queries)
        base = (self.seed * 100_000_019 + index * scenes) % (HELDOUT_SEED_START - scenes)
        samples = [s for i in range(scenes) for s in make_samples(base + i, self.queries)][:self.batch_size]
        return {
            "images": torch.from_numpy(np.stack([s.image for s in samples])),
            "masks": torch.from_numpy(np.stack([s.mask for s in samples])),
            "prompts": torch.from_numpy(np.stack([s.prompts for s in samples])),
            "expressions": [s.expression for s in samples],
        }

    def __iter__(self):
        worker = get_worker_info()
        offset, stride = (worker.id, worker.num_workers) if worker else (0, 1)
        if worker:
            torch.set_num_threads(1)
        index = self.first_batch + offset
        while True:
            yield self.batch(index)
            index += stride


def segmentation_loss(out: SegmenterOutput, target: torch.Tensor) -> tuple[torch.Tensor, dict]:
    """SAM-style loss: BCE + Dice of the best of the candidate masks, plus MSE of the predicted IoU scores.

    An empty target (absent object) is matched by an empty prediction; its IoU counts as 1.
    """
    logits = out.masks.float()
    target = target[:, None].float().expand_as(logits)
    bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none").mean((2, 3))
    probs = torch.sigmoid(logits)
    dice = 1 - (2 * (probs * target).sum((2, 3)) + 1) / (probs.sum((2, 3)) + target.sum((2, 3)) + 1)
    per_candidate = 4 * bce + dice
    best = per_candidate.min(dim=1).values
    with torch.no_grad():
        hard = logits > 0
        inter = (hard & (target > 0.5)).sum((2, 3)).float()
        union = (hard | (target > 0.5)).sum((2, 3)).float()
        iou = torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union))
    score_loss = F.mse_loss(out.scores.float(), iou)
    loss = best.mean() + score_loss
    return loss, {"mask": best.mean().item(), "score": score_loss.item(), "iou": iou.max(1).values.mean().item()}


def write_json(path: Path, payload: dict) -> None:
    """Write ``payload`` as pretty JSON atomically."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(payload, indent=2))
    os.replace(tmp, path)


def learning_rate(base: float, step: int, first_step: int, progress: float) -> float:
    """Linear warm-up over WARMUP_STEPS from the run's first step (or WARMUP_SHARE of the progress, whichever is
    reached first), then cosine decay to 5 % by progress 1."""
    warm = min(1.0, max((step - first_step + 1) / WARMUP_STEPS, progress / WARMUP_SHARE))
    return base * warm * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--minutes", type=float, default=6.5, help="training time budget (evaluation excluded)")
    parser.add_argument("--steps", type=int, default=0, help="stop after this many steps instead (0: time only)")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--resume", type=Path, default=None, help="segmenter.safetensors to continue from")
    parser.add_argument("--batch-size", type=int, default=0, help="0: 64 on CUDA, 16 on CPU")
    parser.add_argument("--queries-per-scene", type=int, default=2)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--workers", type=int, default=-1, help="DataLoader workers (-1: 4 on CUDA, 0 on CPU)")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads of the main process")
    parser.add_argument("--eval-samples", type=int, default=-1, help="-1: 2000 on CUDA, 200 on CPU")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    """Train, save, evaluate; returns the metadata written to segmentation.json."""
    args = parse_args(argv)
    cuda = args.device.startswith("cuda")
    batch_size = args.batch_size or (64 if cuda else 16)
    workers = args.workers if args.workers >= 0 else (4 if cuda else 0)
    eval_samples = args.eval_samples if args.eval_samples >= 0 else (2000 if cuda else 200)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    np.random.seed(args.seed)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    args.out.mkdir(parents=True, exist_ok=True)
    weights_path, json_path = args.out / WEIGHTS_NAME, args.out / CONFIG_NAME

    if args.resume:
        model, previous = load_checkpoint(args.resume)
        first_step = int(previous.get("steps", 0))
        history = previous.get("runs", [])
    else:
        model, first_step, history = Segmenter(SegmenterConfig()), 0, []
    model.to(args.device).train()
    text_encoder = MiniLMEncoder().to(args.device)
    params = sum(p.numel() for p in model.parameters())
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.02)
    fashion_items("train"), background_photos()  # loaded once here, shared by the forked workers
    stream = SceneStream(args.seed, batch_size, args.queries_per_scene, first_batch=first_step)
    loader = DataLoader(stream, batch_size=None, num_workers=workers, pin_memory=cuda,
                        persistent_workers=workers > 0, prefetch_factor=4 if workers else None)
    budget = args.minutes * 60
    print(f"segmenter: {params / 1e6:.2f} M parameters, batch {batch_size}, {workers} workers, device {args.device}, "
          f"budget {budget:.0f} s, starting at step {first_step}", flush=True)

    def metadata(step: int, elapsed: float) -> dict:
        run = {"seed": args.seed, "device": args.device, "first_step": first_step, "last_step": step,
               "wall_seconds": round(elapsed, 1), "batch_size": batch_size, "lr": args.lr,
               "resumed_from": str(args.resume) if args.resume else None, "loss_curve": curve}
        return {"config": model.config.to_dict(), "steps": step, "samples_seen": step * batch_size,
                "parameters": params, "weights": WEIGHTS_NAME, "text_encoder": "all-MiniLM-L6-v2 (frozen)",
                "torch": torch.__version__, "python": platform.python_version(), "runs": [*history, run]}

    curve: list[dict] = []
    step, started = first_step, time.time()
    last_log = last_save = started
    window_loss, window_steps, window_iou, data_wait = 0.0, 0, 0.0, 0.0
    batches = iter(loader)
    while True:
        elapsed = time.time() - started
        progress = step - first_step >= args.steps if args.steps else elapsed >= budget
        if progress:
            break
        fetch = time.time()
        batch = next(batches)
        data_wait += time.time() - fetch
        images = batch["images"].to(args.device, non_blocking=True).permute(0, 3, 1, 2).float() / 255
        masks = batch["masks"].to(args.device, non_blocking=True)
        prompts = batch["prompts"].to(args.device, non_blocking=True)
        fraction = (step - first_step) / args.steps if args.steps else elapsed / budget
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(args.lr, step, first_step, fraction)
        out = run_model(model, text_encoder, images, batch["expressions"], prompts, autocast=cuda)
        loss, parts = segmentation_loss(out, masks)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        step += 1
        window_loss += parts["mask"] + parts["score"]
        window_iou += parts["iou"]
        window_steps += 1
        now = time.time()
        if now - last_log >= LOG_EVERY_S:
            rate = window_steps / (now - last_log)
            point = {"step": step, "seconds": round(now - started, 1), "loss": round(window_loss / window_steps, 4),
                     "train_iou": round(window_iou / window_steps, 4)}
            curve.append(point)
            print(f"step {step}  loss {point['loss']:.4f}  train IoU {point['train_iou']:.3f}  {rate:.1f} steps/s  "
                  f"{rate * batch_size:.0f} samples/s  data wait {100 * data_wait / (now - last_log):.0f}%  "
                  f"lr {optimizer.param_groups[0]['lr']:.2e}", flush=True)
            last_log, window_loss, window_steps, window_iou, data_wait = now, 0.0, 0, 0.0, 0.0
        if now - last_save >= SAVE_EVERY_S:
            save_weights(model, weights_path)
            write_json(json_path, metadata(step, now - started))
            last_save = now
    train_seconds = time.time() - started
    if window_steps:
        curve.append({"step": step, "seconds": round(train_seconds, 1), "loss": round(window_loss / window_steps, 4),
                      "train_iou": round(window_iou / window_steps, 4)})
    save_weights(model, weights_path)
    meta = metadata(step, train_seconds)
    write_json(json_path, meta)
    print(f"trained {step - first_step} steps in {train_seconds:.0f} s; evaluating on {eval_samples} held-out queries",
          flush=True)
    del batches, loader
    meta["heldout"] = evaluate_heldout(model, text_encoder, args.device, eval_samples, autocast=cuda)
    write_json(json_path, meta)
    print(json.dumps(meta["heldout"], indent=1), flush=True)
    return meta


if __name__ == "__main__":
    main()
