"""The Referring-segmentation tab: text, clicks and a box → masks, and the tasks derived from one mask.

Talks to the segmentation backend only through its client (``segment_view``, ``segment_attention``). Clicks land on
the result picture; the backend caches each image's features, so every further click or threshold change is fast.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import gradio as gr
import numpy as np
from PIL import Image, ImageDraw

from backends.core.client import Client
from backends.core.config import PanelConfig
from backends.segmentation.tasks import iou
from ui.atlas_view import atlas_section, cell_summary, clicked_head, show_atlas
from ui.common import call_backend, explanation, model_choices, queue_settings

EXAMPLES_DIR = Path(__file__).resolve().parents[1] / "assets" / "segmentation" / "examples"
CLICK_MODES = ("Include (+)", "Exclude (−)", "Box corner")
CANDIDATES = ("Best score", "1", "2", "3")

INTRO = """### Referring segmentation: one mask, many tasks
Upload an image or pick an example, type what to find (*"the bag left of the sneaker"*, *"all the shirts"*), and/or
click on the picture on the right (include / exclude points, or two box corners). The mask also gives detection
boxes, a count, a grounding box and a yes/no presence answer, as in RemoteSAM.
The embedded model knows only its generated world (clothing items and simple shapes): on other photos, clicks and a
box get a classical GrabCut answer, and text needs the hub model (CLIPSeg + SAM)."""

EXPLANATION = """
**The embedded model** (trained by HeadLab on generated scenes of Fashion-MNIST items and shapes) is object-centric.
A small U-Net marks the pixels that belong to items; its connected components are the *objects*. Each object
becomes a token from a crop of it (a small CNN), its box and its mean colour. This part runs once per image and is
cached. The expression goes through the frozen sentence model all-MiniLM-L6-v2, whose token states become *word
tokens*. Three fusion blocks let the objects attend to each other (for "left of", "biggest", "second from the top"),
the objects attend to the words and the *words attend to the objects* (*words→objects* heads: which objects does the
word "bag" look at?). Clicks and a box enter as exact evidence per object (is a click inside it, how much of it lies
in the box). Each object then gets a probability of being referred. The three candidates are the three most
probable *sets* of objects. The **score** is the probability that exactly this set is meant.

**Tasks from the mask** (RemoteSAM): *detection* = connected components of the thresholded map, each box scored by
the mean probability inside it, then non-maximum suppression (IoU 0.5); *count* = the number of boxes; *grounding
box* = their union; *presence* = 0.5·max + 0.5·mean probability over the predicted region, "present" above 0.5.

**Controls**: the *threshold* turns the probability map into the mask (it trims outlines); *candidate* shows another
of the three masks (the next most probable sets of objects). Exports: the PNG mask, the boxes as JSON and the mask
as COCO run-length encoding.

**Prompts are always honoured**: the mask never leaves the box, an exclude click never lies inside it, and an
include click outside it comes with a note saying why. When the image is unlike the embedded model's world, or no
item it knows lies under the include clicks or in the box, OpenCV's **GrabCut** answers instead (labelled as the
classical fallback): it fits colour models of the object and the background, seeded by the box (outside =
background) and the clicks (a disc around each include click = probably object), and cuts between them. It does
well on an object whose colours differ from its surroundings and badly on camouflaged or low-contrast ones, and it
never reads the expression.

**Hub path** (for real photos, needs internet): CLIPSeg turns the text into a coarse map; a box around its confident
region and a click at its peak prompt SAM, which returns the refined masks. The embedded model only knows its
synthetic world (clothing items and simple shapes on photo/texture backgrounds), so expect little on real photos.

**Limits**: the embedded model sees a 128×128 letterboxed copy of the image; fine details are lost on large images.
Huge images are downscaled to 2048 px; grayscale and transparent images are converted to RGB.
"""


ATLAS_WHAT = ("Each grid: how much the mIoU of one query kind (colour, category, position, …) drops when one of the "
              "fusion blocks' attention heads alone is zero-ablated, on fixed generated scenes (rows: the fusion "
              "blocks' attention layers, columns: heads).")


def _examples() -> list[list[Any]]:
    listing = EXAMPLES_DIR / "examples.json"
    if not listing.exists():
        return []
    return [[str(EXAMPLES_DIR / e["file"]), e["expression"], e["points"], e["box"]]
            for e in json.loads(listing.read_text())]


def _write_exports(mask: Image.Image, summary: dict) -> list[str]:
    """The PNG mask, the boxes JSON and the COCO RLE JSON as files for download."""
    folder = Path(tempfile.mkdtemp(prefix="headlab-seg-"))
    mask_path = folder / "mask.png"
    mask.save(mask_path)
    boxes = {k: summary[k] for k in ("boxes", "count", "grounding_box", "present", "presence_score", "score")}
    (folder / "boxes.json").write_text(json.dumps(boxes, indent=1))
    (folder / "mask_rle.json").write_text(json.dumps(summary["rle"]))
    return [str(mask_path), str(folder / "boxes.json"), str(folder / "mask_rle.json")]


def _answer_text(summary: dict) -> str:
    """The answer line: presence, count, grounding box, who answered, the candidates, objects and notes."""
    scores = ", ".join(f"{c['index'] + 1}: {c['score']:.2f}" for c in summary["candidates"])
    if summary["area"]:
        found = (f"**Present:** {'yes' if summary['present'] else 'no'} (presence {summary['presence_score']:.2f}) · "
                 f"**count:** {summary['count']} · **grounding box:** {summary['grounding_box']}")
    else:
        found = f"**Present:** no — the mask is empty · **count:** {summary['count']}"
    answered = summary.get("answered_by", summary["model"])
    who = f"answered by **{answered}**" + (" (classical fallback)" if answered != summary["model"] else "")
    cached = " (image features from cache)" if summary["feature_cache_hit"] else ""
    notes = "".join(f"\n\n⚠️ {note}" for note in summary["notes"])
    objects = summary.get("objects")
    listing = ""
    if objects:
        items = ", ".join(f"{o['colour']} {o['category']} {o['referred']:.2f}" for o in objects)
        listing = f"\n\n**Objects found** (the model's guesses, P(referred)): {items}"
    return (f"{found} · {who} · candidate {summary['candidate'] + 1} of {len(summary['candidates'])} "
            f"(candidate scores {scores}) · {summary['seconds'] * 1000:.0f} ms{cached}{listing}{notes}")


def _domain_text(summary: dict) -> str:
    """The out-of-domain note shown above the result (empty when the image is like the model's world)."""
    return f"ℹ️ **{summary['out_of_domain']}**" if summary.get("out_of_domain") else ""


def mark_corner(picture: Image.Image, x: float, y: float) -> Image.Image:
    """A copy of ``picture`` with a cross-hair marker at (x, y) (picture pixels): the first corner of a box."""
    marked = picture.convert("RGB")
    draw = ImageDraw.Draw(marked)
    size = max(6, round(min(marked.size) * 0.04))
    for colour, width in (((0, 0, 0), 7), ((255, 220, 0), 3)):
        draw.line([(x - size, y), (x + size, y)], fill=colour, width=width)
        draw.line([(x, y - size), (x, y + size)], fill=colour, width=width)
    return marked


def build(client: Client, config: PanelConfig) -> None:
    """Build the tab's components and wire them to the backend."""
    queue = queue_settings(config)
    gr.Markdown(INTRO)
    scale = gr.State(1.0)  # result picture pixels per original pixel
    corner = gr.State(None)  # first box corner while a box is being drawn
    with gr.Row():
        with gr.Column(scale=1):
            image = gr.Image(type="pil", image_mode=None, label="Image", sources=["upload", "clipboard"])
            expression = gr.Textbox(label="Expression", placeholder="e.g. the red bag left of the sneaker")
            model = model_choices(config)
            mode = gr.Radio(list(CLICK_MODES), value=CLICK_MODES[0], label="A click on the result picture adds")
            points = gr.Textbox(label="Points [[x, y, 1|0], …] (image pixels)", value="")
            box = gr.Textbox(label="Box [x0, y0, x1, y1] (image pixels)", value="")
            with gr.Row():
                run = gr.Button("Segment", variant="primary")
                clear = gr.Button("Clear clicks and box")
            example_list = gr.Dataset(components=[image, expression, points, box], samples=_examples(),
                                      headers=["Image", "Expression", "Clicks", "Box"],
                                      label="Examples (held-out scenes: text, clicks, a box): click one to run it")
        with gr.Column(scale=1):
            domain = gr.Markdown(elem_id="segmentation-domain")
            picture = gr.Image(type="pil", label="Result (click to add points)", interactive=False, format="png",
                               elem_id="segmentation-result")
            with gr.Row():
                threshold = gr.Slider(0.05, 0.95, value=0.5, step=0.05, label="Threshold")
                candidate = gr.Radio(list(CANDIDATES), value=CANDIDATES[0], label="Candidate mask")
            answer = gr.Markdown(elem_id="segmentation-answer")
            files = gr.File(label="Exports: PNG mask, boxes JSON, COCO RLE", file_count="multiple")
            details = gr.JSON(label="API answer", elem_id="segmentation-details")
    with gr.Accordion("Attention heads: where does a word look?", open=False):
        with gr.Row():
            token = gr.Slider(0, 31, value=1, step=1, label="Token index (0 = [CLS])")
            layer = gr.Slider(-1, 2, value=-1, step=1, label="Fusion layer (-1 = last)")
            head = gr.Slider(-1, 3, value=-1, step=1, label="Head (-1 = mean)")
        show = gr.Button("Show attention")
        heat = gr.Image(type="pil", label="words→objects attention", interactive=False)
        tokens = gr.Markdown()
    with gr.Accordion("Which heads matter here? The head atlas", open=False, elem_id="segmentation-atlas"):
        atlas = atlas_section("segmentation-atlas", ATLAS_WHAT, result="Your segmentation")
        before, after = atlas.before, atlas.after
    explanation("How it works", EXPLANATION)

    def segment(img, text, pts, bx, model_id, thr, cand) -> tuple:
        view, mask, summary = call_backend(client, "segment_view", img, text or "", pts or "", bx or "",
                                           model_id or "", float(thr), CANDIDATES.index(cand) - 1)
        return (view, _answer_text(summary), _write_exports(mask, summary), summary, summary["scale"],
                _domain_text(summary))

    inputs = [image, expression, points, box, model, threshold, candidate]
    outputs = [picture, answer, files, details, scale, domain]
    for trigger in (run.click, expression.submit, threshold.release, candidate.input):
        trigger(segment, inputs, outputs, **queue)

    def fresh(img) -> tuple:
        """The new (or removed) image on the result side, its clicks and box cleared, no answer on screen."""
        return img, "", "", 1.0, None, "", None, None, ""

    cleared = [picture, points, box, scale, corner, answer, files, details, domain]
    image.upload(fresh, image, cleared, queue=False)
    image.clear(lambda: fresh(None), None, cleared, queue=False)

    def load_example(row: list) -> tuple:
        return Image.open(row[0]), row[1], row[2], row[3], CANDIDATES[0]

    example_list.click(load_example, example_list, [image, expression, points, box, candidate], queue=False).then(
        segment, inputs, outputs, **queue)

    def add_click(img, view, pts, bx, click_mode, factor, first, event: gr.SelectData) -> tuple:
        if img is None:
            raise gr.Error("Upload an image or pick an example first.")
        x, y = (round(v / factor, 1) for v in event.index[:2])
        if click_mode == CLICK_MODES[2]:
            if first is None:
                return pts, bx, (x, y), mark_corner(view, *event.index[:2])
            x0, y0 = first
            return pts, json.dumps([min(x0, x), min(y0, y), max(x0, x), max(y0, y)]), None, gr.skip()
        label = 1 if click_mode == CLICK_MODES[0] else 0
        current = json.loads(pts) if pts and pts.strip() else []
        return json.dumps([*current, [x, y, label]]), bx, None, gr.skip()

    def segment_after_click(img, text, pts, bx, model_id, thr, cand, first) -> tuple:
        """Segment after a click, except while a box waits for its second corner."""
        if first is not None:
            return tuple(gr.skip() for _ in outputs)
        return segment(img, text, pts, bx, model_id, thr, cand)

    picture.select(add_click, [image, picture, points, box, mode, scale, corner], [points, box, corner, picture],
                   queue=False).then(segment_after_click, [*inputs, corner], outputs, **queue)

    def clear_prompts(img) -> tuple:
        """No clicks, no box, no markers and no answer: the plain image on the result side."""
        return "", "", None, img, "", None, None, "", 1.0

    clear.click(clear_prompts, image, [points, box, corner, picture, answer, files, details, domain, scale],
                queue=False)

    def attention(img, text, pts, bx, tok, lay, hd) -> tuple:
        view, info = call_backend(client, "segment_attention", img, text or "", pts or "", bx or "",
                                  int(lay), int(hd), int(tok))
        listing = " ".join(f"`{i}:{t}`" for i, t in enumerate(info["tokens"]))
        weights = ", ".join(f"{w:.2f}" for w in info["objects"]) or "no objects"
        return view, (f"Tokens: {listing} — token {info['token']} gives the objects (largest first) {weights}; "
                      f"{info['nothing']:.2f} goes to *nothing*")

    show.click(attention, [image, expression, points, box, token, layer, head], [heat, tokens], **queue)

    def fetch_atlas(model_id: str) -> tuple:
        return show_atlas(call_backend(client, "segmentation_head_effects", model_id or "", ""))

    def pick_cell(found: dict | None, img, text, pts, bx, model_id, thr, cand, event: gr.SelectData) -> tuple:
        cell = clicked_head(found, event, img)
        if cell is None:
            return gr.skip(), gr.skip(), gr.skip()
        task, head = cell
        args = (img, text or "", pts or "", bx or "", model_id or "", float(thr), CANDIDATES.index(cand) - 1)
        view_before, mask_before, _ = call_backend(client, "segment_view", *args, "")
        view_after, mask_after, summary = call_backend(client, "segment_view", *args, head)
        overlap = iou(np.asarray(mask_before.convert("L")) > 127, np.asarray(mask_after.convert("L")) > 127)
        return view_before, view_after, (f"{cell_summary(found, task, head)} On your input, the mask with {head} off "
                                         f"overlaps the original by IoU {overlap:.2f} ({summary['area']:,} px).")

    model.change(lambda: (None, None, "", "", None, None), None, [*atlas.outputs, before, after], queue=False)
    for control in (image, expression, points, box, threshold, candidate):  # before/after follow their inputs
        control.change(lambda: (None, None, ""), None, [before, after, atlas.clicked], queue=False)
    atlas.compute.click(fetch_atlas, model, atlas.outputs, **queue)
    atlas.image.select(pick_cell, [atlas.state, *inputs], [before, after, atlas.clicked], **queue)

