r"""Train the TextPromptIR-style restorer and the prompt classifier (on the core of :mod:`backends.core.training`).

    python -m backends.restoration.train --device cuda --steps 10000 --minutes 6.5 --out DIR --seed 0
    python -m backends.restoration.train --device cpu --threads 2 --cpu-bf16 --compile --minutes 30 --out DIR2 \
        --resume DIR

Writes flat into DIR, every ~60 s and at the end: restorer.safetensors (weights + config), checkpoint.pt (weights,
AdamW state, step and schedule, for --resume) and restoration.json (config, steps, wall time, loss curve; held-out
metrics at the end).

Training images: the PyPI sample photos plus the Debian photos that ``make restoration-data`` installs (without
them it trains on the PyPI photos alone and says which are missing).

On a machine that has torch but neither MiniLM nor the sample images (a lent GPU), prepare both here first:

    make restoration-data && python -m backends.restoration.images artifacts/gpu/images.npz
    python -m backends.restoration.sentences artifacts/gpu/sentences.safetensors
    HEADLAB_RESTORATION_IMAGES=artifacts/gpu/images.npz python -m backends.restoration.train --device cuda \
        --sentences artifacts/gpu/sentences.safetensors --batch 64 --crop 128 --lr 2e-4 --out DIR --resume ...
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812 - the usual torch alias

from backends.core.training import Schedule, Trainer, resume_point
from backends.restoration.anchors import InstructionAnchors
from backends.restoration.checkpoint import REPORT_FILE, WEIGHTS_FILE, load_models, save_models
from backends.restoration.data import TASK_WEIGHTS, BatchSampler
from backends.restoration.evaluate import evaluate_heldout
from backends.restoration.images import load_images, training_names
from backends.restoration.model import PromptClassifier, RestorationModels, RestorerConfig, TextPromptIR
from backends.restoration.prompts import TASKS
from backends.restoration.sentences import SentenceTable

WARMUP_STEPS = 200
EMBEDDING_JITTER = 0.02  # std of Gaussian noise added to sentence embeddings in training (paraphrase robustness)


def train_classifier(table: SentenceTable, device: torch.device, seed: int, steps: int = 200) -> tuple[
        PromptClassifier, float]:
    """Fit the prompt classifier on all training templates at once (class-balanced loss, jittered embeddings)."""
    generator = torch.Generator(device=device).manual_seed(seed)
    torch.manual_seed(seed)
    classifier = PromptClassifier().to(device)
    optimizer = torch.optim.AdamW(classifier.parameters(), lr=3e-3, weight_decay=1e-2)
    rows = torch.tensor([row for task in TASKS for row in table.train_ids[task]], device=device)
    labels = torch.tensor([index for index, task in enumerate(TASKS) for _ in table.train_ids[task]], device=device)
    counts = torch.bincount(labels, minlength=len(TASKS)).float()
    class_weights = counts.sum() / (len(TASKS) * counts)
    embeddings = table.embeddings[rows]

    def step_loss(_: int) -> tuple[torch.Tensor, dict]:
        inputs = embeddings + 0.03 * torch.randn(embeddings.shape, generator=generator, device=device)
        return F.cross_entropy(classifier(inputs), labels, weight=class_weights), {}

    constant = Schedule(3e-3, 0, steps, warmup_steps=1, floor=1.0)
    Trainer({"model": classifier}, optimizer, constant, clip=None, log=lambda line: None).run(step_loss)
    classifier.eval()
    with torch.no_grad():
        accuracy = float((classifier(embeddings).argmax(-1) == labels).float().mean())
    return classifier, accuracy


def run_summary(train_report: dict) -> dict:
    """One training run's settings and step range from a report's ``train`` section (no loss curve, no chain)."""
    return {key: value for key, value in train_report.items() if key not in ("loss_curve", "previous_runs")}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options (``argv`` defaults to sys.argv)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--steps", type=int, default=10000, help="steps of the learning-rate schedule")
    parser.add_argument("--minutes", type=float, default=None,
                        help="stop after this much training time (evaluation excluded); --resume continues")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--resume", type=Path, help="run directory (or its restorer.safetensors) to continue from")
    parser.add_argument("--batch", type=int, help="default 24 on cuda, 8 on cpu")
    parser.add_argument("--crop", type=int, help="default 128 on cuda, 64 on cpu")
    parser.add_argument("--lr", type=float, default=3e-4)
    parser.add_argument("--width", type=int, default=RestorerConfig.width, help="channels C of a new model")
    parser.add_argument("--blocks", default=",".join(map(str, RestorerConfig.blocks)),
                        help="blocks per level of a new model, e.g. 1,2,2,2")
    parser.add_argument("--task-weights", default=",".join(map(str, TASK_WEIGHTS)),
                        help="sampling weights of noise,haze,rain,none in a batch")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--compile", action="store_true",
                        help="torch.compile the training forward pass: ~2 min compiling, then on a 2-core CPU "
                             "1.29× the steps/s of --cpu-bf16 alone")
    parser.add_argument("--eval-side", type=int, help="held-out evaluation crop side; default 512 cuda, 192 cpu")
    parser.add_argument("--sentences", type=Path,
                        help="sentence-embedding cache (safetensors): read when it matches, else written; lets "
                             "machines without MiniLM train (see backends.restoration.sentences)")
    parser.add_argument("--cpu-bf16", action="store_true",
                        help="bfloat16 autocast on CPU (always on for CUDA); 1.35× the steps/s on an AVX512-BF16 CPU")
    parser.add_argument("--no-baselines", action="store_true", help="skip classical baselines in the evaluation")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    """Train, save periodically, evaluate on held-out images and write the report."""
    args = parse_args(argv)
    started = time.time()
    device = torch.device(args.device)
    on_cuda = device.type == "cuda"
    batch_size = args.batch or (24 if on_cuda else 8)
    crop = args.crop or (128 if on_cuda else 64)
    eval_side = args.eval_side or (512 if on_cuda else 192)
    autocast = on_cuda or args.cpu_bf16
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    np.random.seed(args.seed)
    if on_cuda:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
    args.out.mkdir(parents=True, exist_ok=True)

    table = SentenceTable(device, args.sentences)
    classifier, classifier_train_accuracy = train_classifier(table, device, args.seed)

    history, resumed_from, previous_runs, weights_step = [], None, [], 0
    if args.resume:
        weights = args.resume / WEIGHTS_FILE if args.resume.is_dir() else args.resume
        resumed = load_models(weights, device)
        restorer, resumed_from = resumed.restorer, str(args.resume)
        weights_step = int(resumed.metadata.get("step", 0))
        previous_report = weights.parent / REPORT_FILE
        if previous_report.exists():
            previous = json.loads(previous_report.read_text())["train"]
            history = previous["loss_curve"]
            previous_runs = [*previous.get("previous_runs", []), run_summary(previous)]
    else:
        blocks = tuple(int(count) for count in args.blocks.split(","))
        restorer = TextPromptIR(RestorerConfig(width=args.width, blocks=blocks)).to(device)
    restorer.train()
    point = resume_point(args.resume, weights_step,
                         lambda first: Schedule(args.lr, first, first + args.steps, WARMUP_STEPS, floor=0.01))
    optimizer = torch.optim.AdamW(restorer.parameters(), lr=args.lr, weight_decay=1e-4, betas=(0.9, 0.999))
    trainer = Trainer({"model": restorer}, optimizer, point.schedule, args.out,
                      log=lambda line: print(line, flush=True))
    if point.checkpoint is not None:
        trainer.restore(point.checkpoint)
    first_step = trainer.step
    training_forward = torch.compile(restorer) if args.compile else restorer
    models = RestorationModels(restorer, classifier)

    images = load_images(training_names(), skip_missing=True)
    task_weights = tuple(float(weight) for weight in args.task_weights.split(","))
    sampler = BatchSampler(list(images.values()), table.train_ids, crop, device, seed=args.seed + first_step,
                           task_weights=task_weights)
    jitter = torch.Generator(device=device).manual_seed(args.seed + 7 + first_step)
    parameter_count = sum(p.numel() for p in restorer.parameters())
    print(f"restorer {parameter_count / 1e6:.2f} M parameters, {len(images)} training images, batch {batch_size}"
          f"×{crop}², device {device}, steps {first_step}–{trainer.schedule.last_step}, "
          f"setup {time.time() - started:.1f}s", flush=True)

    def write_report(extra: dict, train_seconds: float) -> None:
        report = {
            "config": restorer.config.to_dict(),
            "classifier": {"hidden": 128, "tasks": list(TASKS), "train_accuracy": classifier_train_accuracy},
            "text_encoder": "all-MiniLM-L6-v2, mean-pooled and L2-normalised (backends.core.text_encoder)",
            "train": {
                "device": torch.cuda.get_device_name(device) if on_cuda else "cpu", "bf16": autocast,
                "seed": args.seed, "batch": batch_size, "crop": crop, "schedule": trainer.schedule.to_dict(),
                "minutes": args.minutes, "task_weights": dict(zip(TASKS, task_weights, strict=True)),
                "training_images": list(images), "resumed_from": resumed_from, "first_step": first_step,
                "steps": trainer.step, "train_seconds": train_seconds, "wall_seconds": time.time() - started,
                "loss_curve": history + trainer.curve, "previous_runs": previous_runs,
            },
        }
        report.update(extra)
        temporary = args.out / (REPORT_FILE + ".tmp")
        temporary.write_text(json.dumps(report, indent=1))
        temporary.replace(args.out / REPORT_FILE)

    def step_loss(_: int) -> tuple[torch.Tensor, dict]:
        batch = sampler.sample(batch_size)
        embeddings = table.embeddings[batch.prompt]
        embeddings = embeddings + EMBEDDING_JITTER * torch.randn(embeddings.shape, generator=jitter, device=device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
            restored = training_forward(batch.degraded, embeddings)
        return F.l1_loss(restored.float(), batch.clean), {}

    def write_files(seconds: float) -> None:
        save_models(models, args.out / WEIGHTS_FILE, trainer.step)
        write_report({}, seconds)

    train_seconds = trainer.run(step_loss, args.minutes, write_files)
    print(f"trained {trainer.step - first_step} steps in {train_seconds:.0f}s; evaluating on held-out images",
          flush=True)

    restorer.eval()
    heldout = evaluate_heldout(restorer, classifier, table.embed, max_side=eval_side,
                               with_baselines=not args.no_baselines, anchors=InstructionAnchors(table))
    write_report({"heldout": heldout}, train_seconds)
    for case, metrics in heldout["cases"].items():
        print(case, {key: round(value, 3) if isinstance(value, float) else value for key, value in metrics.items()},
              flush=True)
    print("prompt understanding", heldout["prompt_understanding"], flush=True)
    print(f"done in {time.time() - started:.0f}s; files in {args.out}", flush=True)


if __name__ == "__main__":
    main()
