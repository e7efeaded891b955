"""The Restoration panel's head atlas: how much each task's PSNR changes when one MDTA head alone is switched off.

The probe is fixed: for each task (noise with σ = 25, haze, rain) one ``PROBE_SIZE`` px crop of each benchmark
held-out photo (``images.HELDOUT_NAMES``, never trained on), degraded with fixed seeds and restored with the task's
canonical instruction (``prompts.SUGGESTED_PROMPTS``, steered as the app steers it), in the app's precision:

    effect[task][layer][head] = mean PSNR(head off) − mean PSNR(no head off)     (dB, on the 8-bit result)

so a negative effect means the task needs that head. ``prompt_injection[task][layer]`` is the same change when that
block's two prompt modulations are the identity instead (the block then ignores the instruction). Effects are
single-head: not additive, and a head with no effect may be redundant with another rather than useless.

Every row resumes from the ablated block's input in the unablated run (``TextPromptIR.body``), so it recomputes only
the blocks from its layer on; rows of one layer go through the network together.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from backends.core.head_rows import head_rows
from backends.core.heads import Head, atlas_result
from backends.restoration.adapters import ASSETS, EmbeddedRestorer
from backends.restoration.degrade import degrade
from backends.restoration.images import HELDOUT_NAMES, load_images
from backends.restoration.model import Trace
from backends.restoration.prompts import RESTORATION_TASKS, SUGGESTED_PROMPTS

#: bump when the probe or the effect definition changes (cached atlases are then recomputed)
ATLAS_VERSION = 1
PROBE_SIZE = 64
NOISE_SIGMA = 25.0
#: most rows (ablations × crops) in one pass through the network
MAX_ROWS = 96
SHIPPED = ASSETS / "head_effects"
METRIC = "PSNR (dB) against the clean crop"


@dataclass(frozen=True)
class Probe:
    """The fixed crops every head is measured on: one per photo and task, at ``where`` in each photo (fractions of
    the free height and width), degraded with generators seeded from ``seed``."""

    names: tuple[str, ...] = HELDOUT_NAMES
    size: int = PROBE_SIZE
    where: tuple[float, float] = (0.5, 0.5)
    seed: int = 0
    tasks: tuple[str, ...] = RESTORATION_TASKS

    def tag(self) -> str:
        """What the atlas key says of the probe: tasks × crops per task × crop size."""
        return f"{len(self.tasks)}x{len(self.names)}x{self.size}"

    def describe(self) -> dict:
        """JSON: photos, crop size and position, seed, noise σ and each task's instruction."""
        return {"photos": list(self.names), "crops_per_task": len(self.names), "size": self.size,
                "where": list(self.where), "seed": self.seed, "noise_sigma": NOISE_SIGMA,
                "prompts": {task: SUGGESTED_PROMPTS[task] for task in self.tasks}}

    def corner(self, height: int, width: int) -> tuple[int, int]:
        """(top, left) of the crop in a photo of ``height`` × ``width`` px."""
        return round(self.where[0] * (height - self.size)), round(self.where[1] * (width - self.size))

    def crops(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(degraded, clean) crops [tasks·photos, 3, size, size] in [0, 1], task by task."""
        patches = []
        for image in load_images(self.names).values():
            top, left = self.corner(*image.shape[:2])
            patches.append(image[top:top + self.size, left:left + self.size])
        clean = torch.from_numpy(np.stack(patches)).permute(0, 3, 1, 2).float() / 255.0
        degraded = [degrade(clean, task, torch.Generator().manual_seed(self.seed + 1000 * index),
                            sigma=NOISE_SIGMA if task == "noise" else None)
                    for index, task in enumerate(self.tasks)]
        return torch.cat(degraded), clean.repeat(len(self.tasks), 1, 1, 1)


@dataclass(frozen=True)
class Ablation:
    """What one row switches off: some heads and the prompt modulation of some blocks (layers)."""

    heads: tuple[Head, ...] = ()
    prompt_layers: tuple[int, ...] = ()

    def first_layer(self, layers: int) -> int:
        """The first block it changes (``layers`` when it changes none)."""
        return min([head.layer for head in self.heads] + list(self.prompt_layers), default=layers)


def _psnr(restored: torch.Tensor, clean: torch.Tensor) -> torch.Tensor:
    """PSNR (dB) per row of the 8-bit quantised ``restored`` against ``clean``."""
    quantised = torch.round(restored.float().clamp(0, 1) * 255) / 255
    mse = (quantised - clean).pow(2).mean(dim=(1, 2, 3)).clamp(min=1e-10)
    return -10 * torch.log10(mse)


def _repeat(tensor: torch.Tensor, times: int) -> torch.Tensor:
    return tensor.repeat(times, *([1] * (tensor.dim() - 1)))


@torch.no_grad()
def score_ablations(restorer: EmbeddedRestorer, probe: Probe, ablations: Sequence[Ablation]) -> dict[str, np.ndarray]:
    """Each task's mean PSNR on ``probe`` with each ablation applied (batched; see the module docstring)."""
    model, stack = restorer.restorer, restorer.stack
    degraded, clean = (tensor.to(restorer.device) for tensor in probe.crops())
    crops, per_task = degraded.shape[0], len(probe.names)
    text = torch.cat([restorer.steering(SUGGESTED_PROMPTS[task])[0].expand(per_task, -1) for task in probe.tasks])
    psnr = torch.empty(len(ablations), crops)
    with restorer.autocast():
        prompt = model.prompt_mlp(text.to(restorer.device))
        padded = model.pad(degraded)
        trace: list[Trace] = []
        unablated = _psnr(model.output(model.body(model.embed(padded), (), prompt, trace=trace)) + padded, clean)
        by_layer: dict[int, list[int]] = {}
        for index, ablation in enumerate(ablations):
            by_layer.setdefault(ablation.first_layer(stack.layers), []).append(index)
        for layer, indices in sorted(by_layer.items()):
            if layer == stack.layers:
                psnr[indices] = unablated.float().cpu()
                continue
            x, skips = trace[layer]
            per_pass = max(1, MAX_ROWS // crops)
            for start in range(0, len(indices), per_pass):
                chunk = indices[start:start + per_pass]
                rows = [ablations[index] for index in chunk for _ in range(crops)]
                heads_off = head_rows([row.heads for row in rows], stack.layers, stack.heads).to(restorer.device)
                prompt_off = head_rows([[(block, 0) for block in row.prompt_layers] for row in rows], stack.layers,
                                      1)[..., 0].to(restorer.device)
                out = model.body(_repeat(x, len(chunk)), tuple(_repeat(skip, len(chunk)) for skip in skips),
                                 _repeat(prompt, len(chunk)), heads_off, prompt_off, start=layer)
                restored = model.output(out) + _repeat(padded, len(chunk))
                psnr[chunk] = _psnr(restored, _repeat(clean, len(chunk))).float().cpu().view(len(chunk), crops)
    return {task: psnr[:, index * per_task:(index + 1) * per_task].mean(dim=1).numpy().astype(np.float64)
            for index, task in enumerate(probe.tasks)}


def atlas_key(restorer: EmbeddedRestorer, probe: Probe) -> str:
    """The cache key (and shipped file name) of an atlas: model fingerprint, atlas version, probe size."""
    return f"{restorer.fingerprint()}-v{ATLAS_VERSION}-{probe.tag()}"


def compute_head_effects(restorer: EmbeddedRestorer, probe: Probe | None = None) -> dict:
    """The atlas of ``restorer`` over ``probe``'s tasks (default: the fixed probe), with ``prompt_injection``."""
    started = time.perf_counter()
    probe = probe or Probe()
    stack = restorer.stack
    heads = stack.all_heads()
    ablations = [Ablation(), *(Ablation(heads=(head,)) for head in heads),
                 *(Ablation(prompt_layers=(layer,)) for layer in range(stack.layers))]
    scores = score_ablations(restorer, probe, ablations)
    baseline = {task: float(scores[task][0]) for task in probe.tasks}
    atlas = atlas_result(
        restorer.name, stack, dict.fromkeys(probe.tasks, METRIC), baseline,
        {task: scores[task][1:1 + len(heads)] for task in probe.tasks},
        {**probe.describe(), "precision": restorer.precision}, ATLAS_VERSION, time.perf_counter() - started,
    )
    atlas["prompt_injection"] = {task: [round(float(value) - baseline[task], 5) for value in
                                        scores[task][1 + len(heads):]] for task in probe.tasks}
    return atlas


if __name__ == "__main__":
    import json

    embedded = EmbeddedRestorer.load()
    result = compute_head_effects(embedded)
    SHIPPED.mkdir(parents=True, exist_ok=True)
    target = SHIPPED / f"{atlas_key(embedded, Probe())}.json"
    target.write_text(json.dumps(result))
    print(f"wrote {target} ({result['seconds']} s)")
