"""Train the Guidance panel's embedded models on Fashion-MNIST within a time budget.

First a small CNN classifier (the panel's quality objective and the feature extractor of its Fréchet distance), then
a class-conditional diffusers DiT with rectified flow (velocity prediction, logit-normal t), AdamW with warm-up,
10 % label dropout for classifier-free guidance and an EMA of the weights. Weights are saved every ~60 s and at the
end; a held-out evaluation follows. Files, all flat in ``--out``: dit.safetensors (EMA weights, float16),
classifier.safetensors (float32) and guidance.json (configs, steps, wall time, loss curve, metrics).

    python -m backends.guidance.train --device cuda --minutes 6.5 --out DIR --seed 0
    python -m backends.guidance.train --device cpu --minutes 30 --out DIR --resume DIR   # continue training

Runs are seeded: the same seed gives the same initial weights, batches, noise and label drops, so two runs that reach
the same step counts (``--max-steps``) give the same weights.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

import torch
from torch.nn import functional

from backends.guidance.adapters import EmbeddedDiT
from backends.guidance.data import DeviceBatches, load_split, to_model_range
from backends.guidance.evaluate import autocast_for, evaluate_dit
from backends.guidance.model import (
    CLASSIFIER_CONFIG,
    build_classifier,
    build_dit,
    load_classifier,
    load_dit,
    read_metadata,
    save_weights,
)
from backends.guidance.rectified_flow import flow_matching_loss

DIT_FILE, CLASSIFIER_FILE, REPORT_FILE = "dit.safetensors", "classifier.safetensors", "guidance.json"
LOG_EVERY_S, CHECKPOINT_EVERY_S = 15.0, 60.0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--minutes", type=float, default=6.5, help="training budget (classifier + DiT)")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--resume", type=Path, help="a previous --out folder (or its dit.safetensors) to continue")
    parser.add_argument("--batch-size", type=int, help="DiT batch (default 512 on CUDA, 64 on CPU)")
    parser.add_argument("--lr", type=float, default=8e-4)
    parser.add_argument("--warmup-steps", type=int, default=500)
    parser.add_argument("--label-dropout", type=float, default=0.1)
    parser.add_argument("--ema-decay", type=float, default=0.999)
    parser.add_argument("--classifier-seconds", type=float, help="default: min(35 s, 10 %% of the budget)")
    parser.add_argument("--max-steps", type=int, help="stop the DiT after this many steps even if time remains")
    parser.add_argument("--eval-per-class", type=int, help="samples per class in the evaluation (100 CUDA, 5 CPU)")
    parser.add_argument("--eval-steps", type=int, default=25, help="Euler steps of the evaluation samples")
    parser.add_argument("--threads", type=int, default=min(4, os.cpu_count() or 1))
    return parser.parse_args(argv)


def log(message: str) -> None:
    """One progress line on stdout, flushed."""
    print(message, flush=True)


def random_shift(images: torch.Tensor, generator: torch.Generator, max_pixels: int = 2) -> torch.Tensor:
    """Translate each [-1, 1] image by up to ``max_pixels`` in x and y, filling with the black background."""
    batch, _, height, _ = images.shape
    shifts = torch.randint(-max_pixels, max_pixels + 1, (batch, 2), device=images.device, generator=generator)
    theta = torch.zeros(batch, 2, 3, device=images.device)
    theta[:, 0, 0] = theta[:, 1, 1] = 1.0
    theta[:, :, 2] = shifts.float() * 2.0 / height
    grid = functional.affine_grid(theta, list(images.shape), align_corners=False)
    return functional.grid_sample(images + 1.0, grid, align_corners=False) - 1.0


def train_classifier(batches: DeviceBatches, seconds: float, seed: int) -> tuple[torch.nn.Module, dict]:
    """Train the CNN classifier for ``seconds`` (AdamW, cosine decay over the time budget, random shifts)."""
    device = batches.images.device
    torch.manual_seed(seed)
    classifier = build_classifier().to(device).train()
    optimizer = torch.optim.AdamW(classifier.parameters(), lr=2e-3, weight_decay=0.05)
    augment_generator = torch.Generator(device=device).manual_seed(seed + 1)
    start = last_log = time.perf_counter()
    steps = 0
    while (elapsed := time.perf_counter() - start) < seconds:
        for group in optimizer.param_groups:
            group["lr"] = 2e-3 * 0.5 * (1 + math.cos(math.pi * elapsed / seconds))
        images, labels = batches.next()
        with autocast_for(device):
            loss = functional.cross_entropy(classifier(random_shift(images, augment_generator)).float(), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        steps += 1
        if time.perf_counter() - last_log > LOG_EVERY_S:
            last_log = time.perf_counter()
            log(f"[classifier] step {steps} loss {loss.item():.4f} {steps / (last_log - start):.1f} steps/s")
    return classifier.eval(), {"steps": steps, "seconds": round(time.perf_counter() - start, 1)}


class DitTrainer:
    """The DiT, its EMA copy, AdamW and the step/loss bookkeeping of one (possibly resumed) training run."""

    def __init__(self, args: argparse.Namespace, resume_weights: Path | None, history: dict):
        self.args = args
        self.device = torch.device(args.device)
        torch.manual_seed(args.seed)
        if resume_weights is None:
            self.model = build_dit().to(self.device)
        else:
            self.model = load_dit(resume_weights).to(self.device)
        self.model.train()
        self.ema = build_dit(dict(self.model.config), fresh_init=False).to(self.device).eval()
        self.ema.load_state_dict(self.model.state_dict())
        self.ema.requires_grad_(False)
        self.optimizer = torch.optim.AdamW(
            self.model.parameters(), lr=args.lr, weight_decay=0.0, betas=(0.9, 0.99), fused=self.device.type == "cuda"
        )
        self.generator = torch.Generator(device=self.device).manual_seed(args.seed + 2)
        self.step = history.get("steps", 0)
        self.run_steps = 0
        self.loss_curve: list[list[float]] = history.get("loss_curve", [])
        self.previous_seconds = history.get("wall_seconds", 0.0)

    def learning_rate(self) -> float:
        """Linear warm-up over this run's first steps (fresh optimizer state), then constant."""
        return self.args.lr * min(1.0, (self.run_steps + 1) / self.args.warmup_steps)

    def train_step(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """One optimisation step and EMA update; returns the (device) loss without synchronising."""
        for group in self.optimizer.param_groups:
            group["lr"] = self.learning_rate()
        with autocast_for(self.device):
            loss = flow_matching_loss(self.model, images, labels, self.generator, self.args.label_dropout)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        self.optimizer.step()
        self.step += 1
        self.run_steps += 1
        decay = min(self.args.ema_decay, (1 + self.step) / (10 + self.step))
        with torch.no_grad():
            torch._foreach_lerp_(list(self.ema.parameters()), list(self.model.parameters()), 1.0 - decay)
        return loss.detach()

    def save(self, out: Path) -> None:
        """Write the EMA weights (float16) with their config and step count."""
        save_weights(self.ema, out / DIT_FILE, dict(self.ema.config), torch.float16, {"steps": self.step})


def resolve_resume(resume: Path | None) -> tuple[Path | None, Path | None, dict]:
    """(DiT weights, classifier weights or None, previous training history) of a ``--resume`` path."""
    if resume is None:
        return None, None, {}
    folder = resume if resume.is_dir() else resume.parent
    dit_weights = folder / DIT_FILE if resume.is_dir() else resume
    if not dit_weights.exists():
        raise FileNotFoundError(f"--resume: no {dit_weights}")
    report = folder / REPORT_FILE
    history = json.loads(report.read_text())["training"] if report.exists() else {}
    history.setdefault("steps", read_metadata(dit_weights).get("steps", 0))
    classifier_weights = folder / CLASSIFIER_FILE
    return dit_weights, classifier_weights if classifier_weights.exists() else None, history


def write_report(args: argparse.Namespace, trainer: DitTrainer, extra: dict, status: str, run_seconds: float) -> None:
    """Write guidance.json: configs, training record, loss curve and whatever ``extra`` holds (metrics)."""
    curve = trainer.loss_curve
    report = {
        "status": status,
        "command": " ".join(sys.argv),
        "dit": {
            "file": DIT_FILE, "dtype": "float16", "weights": "ema", "config": dict(trainer.ema.config),
            "parameters": sum(p.numel() for p in trainer.ema.parameters()),
            "objective": "rectified flow, velocity (noise - image), logit-normal t; timestep = 1000 t; null class 10",
        },
        "training": {
            "device": str(trainer.device),
            "gpu": torch.cuda.get_device_name(trainer.device) if trainer.device.type == "cuda" else None,
            "seed": args.seed, "batch_size": args.batch_size, "lr": args.lr, "warmup_steps": args.warmup_steps,
            "label_dropout": args.label_dropout, "ema_decay": args.ema_decay,
            "resumed_from": str(args.resume) if args.resume else None,
            "steps": trainer.step, "run_steps": trainer.run_steps,
            "wall_seconds": round(trainer.previous_seconds + run_seconds, 1),
            "run_steps_per_second": round(trainer.run_steps / max(run_seconds, 1e-9), 2),
            "loss_first": curve[0][1] if curve else None, "loss_last": curve[-1][1] if curve else None,
            "loss_curve": curve,
        },
        **extra,
    }
    temporary = args.out / (REPORT_FILE + ".tmp")
    temporary.write_text(json.dumps(report, indent=1))
    temporary.replace(args.out / REPORT_FILE)


def main(argv: list[str] | None = None) -> None:
    """Train, checkpoint, evaluate and report (see the module docstring)."""
    args = parse_args(argv)
    on_cuda = args.device.startswith("cuda")
    args.batch_size = args.batch_size or (512 if on_cuda else 64)
    args.eval_per_class = args.eval_per_class or (100 if on_cuda else 5)
    torch.set_num_threads(args.threads)
    if on_cuda:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    args.out.mkdir(parents=True, exist_ok=True)
    budget = args.minutes * 60.0
    start = time.perf_counter()

    train_images, train_labels = load_split("train", args.device)
    test_images, test_labels = load_split("test", args.device)
    resume_dit, resume_classifier, history = resolve_resume(args.resume)
    log(f"data ready in {time.perf_counter() - start:.1f}s; budget {budget:.0f}s on {args.device}")

    if resume_classifier is not None:
        classifier = load_classifier(resume_classifier).to(args.device)
        classifier_record = json.loads((resume_classifier.parent / REPORT_FILE).read_text())["classifier"]
        log(f"classifier reused from {resume_classifier}")
    else:
        seconds = args.classifier_seconds if args.classifier_seconds is not None else min(35.0, 0.1 * budget)
        classifier, classifier_record = train_classifier(
            DeviceBatches(train_images, train_labels, 256, args.seed), seconds, args.seed
        )
        classifier_record.update(file=CLASSIFIER_FILE, config=CLASSIFIER_CONFIG)
    test_probabilities, test_features = classifier.classify(to_model_range(test_images))
    if resume_classifier is None:
        accuracy = float((test_probabilities.argmax(1) == test_labels.cpu().numpy()).mean())
        classifier_record["test_accuracy"] = round(accuracy, 4)
        log(f"[classifier] {classifier_record['steps']} steps, test accuracy {accuracy:.4f}")
    save_weights(classifier, args.out / CLASSIFIER_FILE, classifier_record["config"], torch.float32)

    trainer = DitTrainer(args, resume_dit, history)
    batches = DeviceBatches(train_images, train_labels, args.batch_size, args.seed + 3 + trainer.step)
    dit_start = last_log = last_checkpoint = time.perf_counter()
    window_loss, window_steps = torch.zeros((), device=args.device), 0
    log(f"[dit] {sum(p.numel() for p in trainer.model.parameters()) / 1e6:.2f}M parameters, from step {trainer.step}")
    while time.perf_counter() - start < budget and (args.max_steps is None or trainer.run_steps < args.max_steps):
        window_loss += trainer.train_step(*batches.next())
        window_steps += 1
        now = time.perf_counter()
        if now - last_log >= LOG_EVERY_S:
            mean_loss = window_loss.item() / window_steps
            trainer.loss_curve.append([trainer.step, round(mean_loss, 5)])
            log(f"[dit] step {trainer.step} loss {mean_loss:.4f} {window_steps / (now - last_log):.1f} steps/s "
                f"elapsed {now - start:.0f}s")
            window_loss, window_steps, last_log = torch.zeros((), device=args.device), 0, now
        if now - last_checkpoint >= CHECKPOINT_EVERY_S:
            trainer.save(args.out)
            write_report(args, trainer, {"classifier": classifier_record}, "training", now - dit_start)
            last_checkpoint = now
    if window_steps:
        trainer.loss_curve.append([trainer.step, round(window_loss.item() / window_steps, 5)])
    run_seconds = time.perf_counter() - dit_start
    trainer.save(args.out)
    write_report(args, trainer, {"classifier": classifier_record}, "evaluating", run_seconds)
    log(f"[dit] done: {trainer.run_steps} steps in {run_seconds:.0f}s ({trainer.step} in total); evaluating")

    eval_start = time.perf_counter()
    reference = train_images[torch.randperm(len(train_images), generator=torch.Generator().manual_seed(args.seed))
                             .to(args.device)[: 10 * args.eval_per_class]]
    model = EmbeddedDiT(trainer.ema, classifier, args.device, torch.float32)
    evaluation = evaluate_dit(
        model, test_features, reference, args.eval_per_class, steps=args.eval_steps, seed=args.seed
    )
    evaluation["seconds"] = round(time.perf_counter() - eval_start, 1)
    write_report(args, trainer, {"classifier": classifier_record, "evaluation": evaluation}, "done", run_seconds)
    log(f"evaluation: {json.dumps(evaluation)}")
    log(f"wrote {args.out / DIT_FILE}, {args.out / CLASSIFIER_FILE}, {args.out / REPORT_FILE}")


if __name__ == "__main__":
    main()
