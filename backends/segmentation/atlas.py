"""The Referring-segmentation panel's head atlas: how much each query kind's mIoU changes when one fusion head alone
is switched off.

A head is switched off by zero ablation (its output is zeroed before its module's output projection, see
:mod:`backends.segmentation.model`). The probe set is fixed: ``per_kind`` text queries of each query kind on
generated scenes from seed ``PROBE_SEED_START`` on (the held-out split, apart from the evaluation sets of
:mod:`backends.segmentation.evaluate`), each scene serving one query of every kind it fits. Each query runs end to
end as in ``evaluate_samples`` (the answer is the best-scoring candidate) and

    effect[kind][layer][head] = mIoU_kind(head off) − mIoU_kind(no head off)

so a negative effect means the kind needs that head. The kinds are the generator's text query kinds that have a
referent (queries about absent objects have no mIoU). Effects are single-head: not additive, and a head with no
effect may be redundant with another rather than useless. The last block's words→objects heads feed nothing the
answer reads, so their effect is exactly 0.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass

import numpy as np
import torch

from backends.core.heads import Head, atlas_result
from backends.core.text_encoder import TextCache, TextEncoding
from backends.segmentation.data import HELDOUT, HELDOUT_SEED_START, IMAGE_SIZE, Sample, make_scene, scene_samples
from backends.segmentation.embedded import ASSETS, EmbeddedSegmenter
from backends.segmentation.evaluate import TEXT_KINDS
from backends.segmentation.model import ImageFeatures, candidate_sets, heads_off_mask, set_map
from backends.segmentation.tasks import iou

#: bump when the probe set or the effect definition changes (cached atlases are then recomputed)
ATLAS_VERSION = 1
PROBE_SEED_START = HELDOUT_SEED_START + 50_000_000
PROBE_PER_KIND = 32
#: atlases that ship with the app, one ``<atlas_key>.json`` per model
SHIPPED = ASSETS / "head_effects"
ATLAS_KINDS = tuple(kind for kind in TEXT_KINDS if kind != "absent")
#: most query rows in one batched decode, most scenes in one batched image encoding
MAX_ROWS = 1024
SCENE_BATCH = 16


def probe_samples(per_kind: int = PROBE_PER_KIND, seed_start: int = PROBE_SEED_START) -> list[Sample]:
    """``per_kind`` samples of each kind of ATLAS_KINDS, deterministic: scene after scene from ``seed_start`` on
    (held-out checks pass another), each asked one query of every kind it still lacks and fits."""
    samples: list[Sample] = []
    needed = dict.fromkeys(ATLAS_KINDS, per_kind)
    seed = seed_start
    while any(needed.values()):
        rng = np.random.default_rng(seed)
        image, items = make_scene(rng, IMAGE_SIZE, HELDOUT)
        seed += 1
        for kind in [kind for kind, count in needed.items() if count]:
            sample = scene_samples(image, items, rng, 1, kinds=(kind,))[0]
            if sample.kind == kind and sample.count > 0:
                samples.append(sample)
                needed[kind] -= 1
    return samples


@dataclass
class Probe:
    """Probe samples with what the model computes from them once: image features and text encodings."""

    samples: list[Sample]
    features: list[ImageFeatures]
    text: TextEncoding
    prompts: torch.Tensor  # [Q, P, 3]

    def describe(self, seed_start: int) -> dict:
        """JSON: how many queries of each kind, on how many scenes from which seed on."""
        kinds = [sample.kind for sample in self.samples]
        return {"queries": len(kinds), "per_kind": {kind: kinds.count(kind) for kind in ATLAS_KINDS},
                "scenes": len({id(sample.image) for sample in self.samples}), "seed_start": seed_start}


@torch.no_grad()
def prepare_probe(segmenter: EmbeddedSegmenter, samples: list[Sample]) -> Probe:
    """Image features and text encodings of ``samples`` (own text cache: the service's caches stay untouched)."""
    model, device = segmenter.model, segmenter.device
    images = {id(sample.image): sample.image for sample in samples}  # a scene serves several queries
    scenes: dict[int, ImageFeatures] = {}
    keys = list(images)
    for start in range(0, len(keys), SCENE_BATCH):
        batch = torch.from_numpy(np.stack([images[key] for key in keys[start:start + SCENE_BATCH]]))
        encoded = model.encode_images(batch.to(device).permute(0, 3, 1, 2).float() / 255)
        scenes.update(zip(keys[start:start + SCENE_BATCH], encoded, strict=True))
    features = [scenes[id(sample.image)] for sample in samples]
    text = TextCache(segmenter.text_encoder)([sample.expression for sample in samples])
    prompts = torch.from_numpy(np.stack([sample.prompts for sample in samples])).to(device)
    return Probe(samples, features, text, prompts)


@torch.no_grad()
def score_heads_off(segmenter: EmbeddedSegmenter, head_sets: list[list[Head]], probe: Probe) -> dict[str, np.ndarray]:
    """Each kind's mIoU [len(head_sets)] on ``probe`` with each head set switched off (batched decodes)."""
    queries = len(probe.samples)
    per_run = max(1, MAX_ROWS // queries)
    ious = np.zeros((len(head_sets), queries))
    answers: dict[tuple[int, bytes], float] = {}  # (query, chosen objects) → IoU: most ablations change nothing
    for start in range(0, len(head_sets), per_run):
        chunk = head_sets[start:start + per_run]
        off = heads_off_mask([heads for heads in chunk for _ in range(queries)], segmenter.stack, segmenter.device)
        repeat = len(chunk)
        out = segmenter.model.decode(
            probe.features * repeat, probe.text.tokens.repeat(repeat, 1, 1), probe.text.mask.repeat(repeat, 1),
            probe.prompts.repeat(repeat, 1, 1), heads_off=off,
        )
        probabilities = torch.sigmoid(out.logits.float()).cpu().numpy()
        for row, p in enumerate(probabilities):
            query = row % queries
            features, sample = probe.features[query], probe.samples[query]
            chosen = candidate_sets(p[:features.tokens.shape[0]], 1)[0][0]
            key = (query, chosen.tobytes())
            if key not in answers:
                answers[key] = iou((set_map(features, chosen) > 0.5).cpu().numpy(), sample.mask)
            ious[start + row // queries, query] = answers[key]
    kinds = np.array([sample.kind for sample in probe.samples])
    return {kind: ious[:, kinds == kind].mean(1) for kind in dict.fromkeys(kinds.tolist())}


def compute_head_effects(segmenter: EmbeddedSegmenter, per_kind: int = PROBE_PER_KIND,
                         seed_start: int = PROBE_SEED_START) -> dict:
    """The atlas of ``segmenter`` over every kind of ATLAS_KINDS (see the module docstring); JSON-able."""
    start = time.perf_counter()
    probe = prepare_probe(segmenter, probe_samples(per_kind, seed_start))
    scores = score_heads_off(segmenter, [[], *[[head] for head in segmenter.stack.all_heads()]], probe)
    return atlas_result(
        segmenter.name, segmenter.stack, {kind: "mIoU" for kind in scores},
        {kind: float(values[0]) for kind, values in scores.items()},
        {kind: values[1:] for kind, values in scores.items()}, probe.describe(seed_start), ATLAS_VERSION,
        time.perf_counter() - start,
    )


def atlas_key(segmenter: EmbeddedSegmenter, per_kind: int = PROBE_PER_KIND) -> str:
    """What an atlas depends on: the model, its weights, the atlas version and the probe size."""
    return f"{segmenter.name}-{segmenter.fingerprint()}-v{ATLAS_VERSION}-{per_kind * len(ATLAS_KINDS)}q"


def main() -> None:
    """Compute the embedded segmenter's atlas and write it to SHIPPED."""
    segmenter = EmbeddedSegmenter.load()
    atlas = compute_head_effects(segmenter)
    SHIPPED.mkdir(parents=True, exist_ok=True)
    path = SHIPPED / f"{atlas_key(segmenter)}.json"
    path.write_text(json.dumps(atlas, ensure_ascii=False) + "\n")
    print(f"{path} ({atlas['seconds']} s)")


if __name__ == "__main__":
    main()
