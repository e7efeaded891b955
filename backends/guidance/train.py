"""Train the Guidance panel's embedded models on Fashion-MNIST (on the core of :mod:`backends.core.training`).

First a small CNN classifier (the panel's quality objective and the feature extractor of its Fréchet distance), then
a class-conditional diffusers DiT with rectified flow (velocity prediction, logit-normal t), AdamW with warm-up then
a constant learning rate, 10 % label dropout for classifier-free guidance and an EMA of the weights. Files, all flat
in ``--out``, written every ~60 s and at the end: dit.safetensors (EMA weights, float16), classifier.safetensors
(float32), checkpoint.pt (DiT, EMA, AdamW, step, for ``--resume``) and guidance.json (configs, steps, wall time,
loss curve; metrics after the held-out evaluation that follows).

    python -m backends.guidance.train --device cuda --minutes 6.5 --out DIR --seed 0
    python -m backends.guidance.train --device cpu --minutes 30 --out DIR2 --resume DIR   # continue training

Runs are seeded: the same seed gives the same initial weights, batches, noise and label drops, so two runs that reach
the same step counts (``--steps``) give the same weights.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.nn import functional

from backends.core.training import Schedule, Trainer, resume_point
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
    parser.add_argument("--classifier-steps", type=int, default=6000, help="steps of the classifier's schedule")
    parser.add_argument("--classifier-seconds", type=float, help="its time limit; default min(35 s, 10 %% of the "
                                                                  "budget)")
    parser.add_argument("--steps", type=int, default=10000, help="steps of the DiT's schedule (time permitting)")
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


def train_classifier(batches: DeviceBatches, steps: int, seconds: float, seed: int) -> tuple[torch.nn.Module, dict]:
    """Train the CNN classifier for ``steps`` or ``seconds``, whichever ends first (AdamW, cosine decay, random
    shifts)."""
    device = batches.images.device
    torch.manual_seed(seed)
    classifier = build_classifier().to(device).train()
    optimizer = torch.optim.AdamW(classifier.parameters(), lr=2e-3, weight_decay=0.05)
    augment_generator = torch.Generator(device=device).manual_seed(seed + 1)

    def step_loss(_: int) -> tuple[torch.Tensor, dict]:
        images, labels = batches.next()
        with autocast_for(device):
            return functional.cross_entropy(classifier(random_shift(images, augment_generator)).float(), labels), {}

    schedule = Schedule(2e-3, 0, steps, warmup_steps=1, floor=0.0)
    trainer = Trainer({"model": classifier}, optimizer, schedule, clip=None,
                      log=lambda line: log(f"[classifier] {line}"))
    elapsed = trainer.run(step_loss, seconds / 60)
    return classifier.eval(), {"steps": trainer.step, "seconds": round(elapsed, 1)}


def ema_updater(model: torch.nn.Module, ema: torch.nn.Module, decay: float) -> Callable[[int], None]:
    """The after-step hook that moves ``ema`` towards ``model`` (decay warmed up over the first steps)."""
    def update(step: int) -> None:
        rate = min(decay, (2 + step) / (11 + step))
        with torch.no_grad():
            torch._foreach_lerp_(list(ema.parameters()), list(model.parameters()), 1.0 - rate)
    return update


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


@dataclass
class DitRun:
    """The DiT run in progress: its trainer (model, EMA, AdamW, schedule), its first step and earlier history."""

    trainer: Trainer
    first_step: int
    history: dict

    @property
    def ema(self) -> torch.nn.Module:
        return self.trainer.modules["ema"]

    def save(self, out: Path) -> None:
        """Write the EMA weights (float16) with their config and step count."""
        save_weights(self.ema, out / DIT_FILE, dict(self.ema.config), torch.float16, {"steps": self.trainer.step})


def start_dit(args: argparse.Namespace, resume_weights: Path | None, history: dict) -> DitRun:
    """A new DiT or the one resumed from (its checkpoint restored when there is one), its EMA, AdamW and schedule."""
    device = torch.device(args.device)
    torch.manual_seed(args.seed)
    model = (build_dit() if resume_weights is None else load_dit(resume_weights)).to(device).train()
    ema = build_dit(dict(model.config), fresh_init=False).to(device).eval()
    ema.load_state_dict(model.state_dict())
    ema.requires_grad_(False)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.0, betas=(0.9, 0.99),
                                  fused=device.type == "cuda")
    point = resume_point(args.resume, int(history.get("steps", 0)),
                         lambda first: Schedule(args.lr, first, first + args.steps, args.warmup_steps, floor=1.0))
    trainer = Trainer({"model": model, "ema": ema}, optimizer, point.schedule, args.out,
                      after_step=ema_updater(model, ema, args.ema_decay), log=lambda line: log(f"[dit] {line}"))
    if point.checkpoint is not None:
        trainer.restore(point.checkpoint)
    return DitRun(trainer, trainer.step, history)


def write_report(args: argparse.Namespace, run: DitRun, extra: dict, status: str, run_seconds: float) -> None:
    """Write guidance.json: configs, training record, loss curve and whatever ``extra`` holds (metrics)."""
    trainer = run.trainer
    curve = run.history.get("loss_curve", []) + trainer.curve
    run_steps = trainer.step - run.first_step
    device = torch.device(args.device)
    report = {
        "status": status,
        "command": " ".join(sys.argv),
        "dit": {
            "file": DIT_FILE, "dtype": "float16", "weights": "ema", "config": dict(run.ema.config),
            "parameters": sum(p.numel() for p in run.ema.parameters()),
            "objective": "rectified flow, velocity (noise - image), logit-normal t; timestep = 1000 t; null class 10",
        },
        "training": {
            "device": str(device),
            "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
            "seed": args.seed, "batch_size": args.batch_size, "schedule": trainer.schedule.to_dict(),
            "label_dropout": args.label_dropout, "ema_decay": args.ema_decay,
            "resumed_from": str(args.resume) if args.resume else None,
            "steps": trainer.step, "run_steps": run_steps,
            "wall_seconds": round(run.history.get("wall_seconds", 0.0) + run_seconds, 1),
            "run_steps_per_second": round(run_steps / max(run_seconds, 1e-9), 2),
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
            DeviceBatches(train_images, train_labels, 256, args.seed), args.classifier_steps, seconds, args.seed
        )
        classifier_record.update(file=CLASSIFIER_FILE, config=CLASSIFIER_CONFIG)
    test_probabilities, test_features = classifier.classify(to_model_range(test_images))
    if resume_classifier is None:
        accuracy = float((test_probabilities.argmax(1) == test_labels.cpu().numpy()).mean())
        classifier_record["test_accuracy"] = round(accuracy, 4)
        log(f"[classifier] {classifier_record['steps']} steps, test accuracy {accuracy:.4f}")
    save_weights(classifier, args.out / CLASSIFIER_FILE, classifier_record["config"], torch.float32)

    run = start_dit(args, resume_dit, history)
    model = run.trainer.modules["model"]
    batches = DeviceBatches(train_images, train_labels, args.batch_size, args.seed + 3 + run.first_step)
    generator = torch.Generator(device=args.device).manual_seed(args.seed + 2 + run.first_step)
    log(f"[dit] {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters, steps {run.first_step}–"
        f"{run.trainer.schedule.last_step}")

    def step_loss(_: int) -> tuple[torch.Tensor, dict]:
        images, labels = batches.next()
        with autocast_for(torch.device(args.device)):
            return flow_matching_loss(model, images, labels, generator, args.label_dropout), {}

    def write_files(seconds: float) -> None:
        run.save(args.out)
        write_report(args, run, {"classifier": classifier_record}, "training", seconds)

    run_seconds = run.trainer.run(step_loss, max(0.0, budget - (time.perf_counter() - start)) / 60, write_files)
    write_report(args, run, {"classifier": classifier_record}, "evaluating", run_seconds)
    log(f"[dit] done: {run.trainer.step - run.first_step} steps in {run_seconds:.0f}s ({run.trainer.step} in total); "
        "evaluating")

    eval_start = time.perf_counter()
    reference = train_images[torch.randperm(len(train_images), generator=torch.Generator().manual_seed(args.seed))
                             .to(args.device)[: 10 * args.eval_per_class]]
    evaluated = EmbeddedDiT(run.ema, classifier, args.device, torch.float32)
    evaluation = evaluate_dit(
        evaluated, test_features, reference, args.eval_per_class, steps=args.eval_steps, seed=args.seed
    )
    evaluation["seconds"] = round(time.perf_counter() - eval_start, 1)
    write_report(args, run, {"classifier": classifier_record, "evaluation": evaluation}, "done", run_seconds)
    log(f"evaluation: {json.dumps(evaluation)}")
    log(f"wrote {args.out / DIT_FILE}, {args.out / CLASSIFIER_FILE}, {args.out / REPORT_FILE}")


if __name__ == "__main__":
    main()
