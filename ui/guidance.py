"""The Guidance tab: per-head SoftPAG perturbation guidance and HeadHunter head search on a diffusion transformer.

Talks to the guidance service only through the client (endpoints ``guidance_layout``, ``guidance_sample``,
``guidance_search``, ``guidance_head_effects``, ``guidance_effect_grid``, ``guidance_progress``,
``guidance_cancel``).
"""

from __future__ import annotations

import json
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import gradio as gr

from backends.core.client import Client
from backends.core.config import PanelConfig
from backends.core.heads import parse_heads
from backends.core.service import ServiceError
from ui.atlas_view import atlas_cell, atlas_section, cell_summary, show_atlas
from ui.common import call_backend, explanation, model_choices, queue_settings

INTRO = """### Perturb single attention heads of a diffusion transformer
Pick heads on the layer × head grid, set how strongly their attention is pulled toward the identity (u) and how much
the sampler is pushed away from that perturbed prediction (PAG scale). Baseline and guided samples use the same seeds.
**HeadHunter** finds heads for you: it scores every head on a few seeds by an objective and keeps the best."""

EXPLANATION = r"""
**Perturbed-attention guidance (PAG).** A second, *perturbed* prediction is made with some self-attention maps
replaced by the identity (each token attends only to itself). It is a weaker model; guidance moves away from it:

$$\hat\epsilon = \epsilon_u + w_{cfg}(\epsilon_c - \epsilon_u) + w_{pag}(\epsilon_c - \epsilon_{pert})$$

(for the embedded rectified-flow model ε is the predicted velocity). CFG scale 1 and PAG scale 0 give the plain model.

**Per head, and soft (SoftPAG).** Instead of whole layers, chosen heads *(l, h)* are perturbed, each by a strength
u ∈ [0, 1]: $A_{l,h} \leftarrow (1-u)A_{l,h} + u\,I$. Since $I V = V$ this is computed without any N×N map:
$O_h = (1-u)\,\mathrm{softmax}(Q_hK_h^\top/\sqrt d)\,V_h + u\,V_h$. The three branches (unconditional,
conditional, perturbed) run as one batch.

**HeadHunter.** Greedy rounds: score every remaining head together with the heads already chosen on M seeds by an
objective (classifier confidence in the class, Fréchet distance, or weight-free sharpness, contrast or
brightness), keep the top k, repeat R rounds. The paper searches with u = 1 and then lowers u to remove artifacts;
it reports that heads specialise (structure, style, lighting, colour).

Paper: Ahn et al., *Fine-Grained Perturbation Guidance via Attention Head Selection* (NeurIPS 2025),
[arXiv:2506.10978](https://arxiv.org/abs/2506.10978). PAG: Ahn et al. 2024, [arXiv:2403.17377](https://arxiv.org/abs/2403.17377).
"""

ATLAS_TEXT = """**What this measures.** For every head alone, the sampler runs with that head *switched off* — perturbed
with u = 1, so its attention becomes the identity and it passes each token's own value on — on a fixed probe set
(every class × 2 seeds, 8 steps, no CFG or PAG). Each grid shows how much one objective changes against the same
seeds with no head off, in % of that objective (red: the objective drops, so it needs this head; blue: it rises).
All grids share one colour scale. **Task specificity** is 1 − the normalised entropy of a head's |effect| over the
objectives (each first scaled by its largest effect): 1 = the head matters for one objective only, 0 = for all alike.

**What it does not measure.** Switching a head to the identity is not zero or mean ablation: the head still passes
its values on, so it measures what the head's *attention pattern* contributes. Effects are single-head and not
additive — two heads may back each other up, so a head with no effect alone may still matter — and they come from a
small probe set at few steps, so small effects are noise. Click a cell to check one on your own sample."""
PRESETS = ("None", "All", "One layer")
DEFAULT_CLASS, DEFAULT_PROMPT = "Sneaker", "a photo of a red fox in the snow"
POLL_SECONDS = 0.25
#: the default that tells Gradio to hand a handler its progress tracker
PROGRESS = gr.Progress()


def build(client: Client, config: PanelConfig) -> None:
    """The Guidance tab's contents (called inside the tab by app.py)."""
    queue = queue_settings(config)
    gr.Markdown(INTRO)
    explanation("How SoftPAG and HeadHunter work · formulas · paper", EXPLANATION)
    grid_style = gr.HTML(_grid_style(6), visible=True, padding=False)
    with gr.Row():
        model = model_choices(config)
        label = gr.Dropdown([], value=DEFAULT_CLASS, allow_custom_value=True, label="Class (or prompt for text models)")
    with gr.Row():
        with gr.Column(scale=3):
            heads = gr.CheckboxGroup(
                [], label="Heads to perturb (layer.head; rows are layers)", elem_id="guidance-heads"
            )
            with gr.Row():
                preset = gr.Radio(list(PRESETS), value="None", label="Preset")
                preset_layer = gr.Slider(0, 5, value=0, step=1, label="Layer for 'One layer'")
                apply_preset = gr.Button("Apply preset", size="sm")
            with gr.Row():
                save_heads = gr.Button("Save head set", size="sm")
                load_heads = gr.UploadButton("Load head set", file_types=[".json"], size="sm",
                                             elem_id="guidance-load-heads")
            heads_note = gr.Markdown(elem_id="guidance-heads-note")
            heads_file = gr.File(label="Saved head set", interactive=False, visible=False)
            snippet = gr.Code(language="python", label="Apply this head set with diffusers (README snippet)",
                              visible=False, elem_id="guidance-snippet")
        with gr.Column(scale=2):
            u = gr.Slider(0, 1, value=1.0, step=0.05, label="u (perturbation strength per head)")
            pag_scale = gr.Slider(0, 10, value=3.0, step=0.25, label="PAG scale")
            cfg_scale = gr.Slider(1, 10, value=1.0, step=0.25, label="CFG scale (1 = off)")
            steps = gr.Slider(1, 100, value=20, step=1, label="Steps")
            with gr.Row():
                n = gr.Slider(1, 16, value=8, step=1, label="Samples")
                seed = gr.Number(0, precision=0, label="Seed")
            sample = gr.Button("Sample baseline and guided", variant="primary")
    with gr.Row():
        baseline_image = gr.Image(label="Baseline (no PAG)", type="pil", interactive=False, elem_id="guidance-baseline")
        guided_image = gr.Image(label="Guided (SoftPAG)", type="pil", interactive=False, elem_id="guidance-guided")
    scores = gr.Markdown(elem_id="guidance-scores")
    with gr.Accordion("HeadHunter: search heads by an objective", open=False):
        with gr.Row():
            objective = gr.Dropdown(["confidence", "frechet", "sharpness"], value="confidence", label="Objective")
            search_seeds = gr.Slider(1, 16, value=4, step=1, label="Seeds per head (M)")
            rounds = gr.Slider(1, 10, value=1, step=1, label="Rounds (R)")
            top_k = gr.Slider(1, 36, value=3, step=1, label="Heads kept per round (k)")
        with gr.Row():
            search = gr.Button("Search heads", variant="primary")
            cancel = gr.Button("Cancel", variant="stop", interactive=False, elem_id="guidance-cancel")
            apply_found = gr.Button("Apply found heads to the grid")
        found = gr.Textbox(label="Found heads", interactive=False)
        search_result = gr.JSON(label="Search details")
    with gr.Accordion("Which heads matter here? The head atlas", open=False, elem_id="guidance-atlas"):
        atlas = atlas_section("guidance-atlas", "Each grid: how much one objective changes when one head alone is "
                              "switched off (rows: layers, columns: heads).", ATLAS_TEXT)
        show_effect_grid = gr.Button("One sample per head off (same seed)")
        with gr.Row():
            before_image = gr.Image(label="Your guided sample", type="pil", interactive=False,
                                    elem_id="guidance-before")
            after_image = gr.Image(label="… with the clicked head off", type="pil", interactive=False,
                                   elem_id="guidance-after")
        effect_grid = gr.Image(label="Row 0: no head off; row 1 + l, column h: head l.h off", type="pil",
                               interactive=False, elem_id="guidance-effect-grid")

    def load_layout(model_id: str) -> tuple:
        layout = call_backend(client, "guidance_layout", model_id or "")
        choices = [f"{layer}.{head}" for layer in range(layout["layers"]) for head in range(layout["heads"])]
        classes = layout.get("classes") or []
        objectives = list(layout["objectives"])
        label_value = DEFAULT_CLASS if DEFAULT_CLASS in classes else (classes or [DEFAULT_PROMPT])[0]
        default = [] if layout["default_heads"] == "none" else layout["default_heads"].split(",")
        return (
            layout,
            gr.CheckboxGroup(choices=choices, value=default),
            gr.Dropdown(choices=classes, value=label_value),
            gr.Slider(maximum=layout["layers"] - 1, value=0),
            gr.Dropdown(choices=objectives, value=objectives[0]),
            gr.Slider(maximum=len(choices), value=min(3, len(choices))),
            _grid_style(layout["heads"]),
            _heads_origin(default),
            None, None, "",  # samples and scores of the previous model
                None, None, "", "", None, None, None,  # its atlas, clicked head, before/after and effect grid
        )

    def pick_preset(choice: str, layer: float, layout: dict) -> list[str]:
        if choice == "All":
            return _all_heads(layout)
        if choice == "One layer":
            return [name for name in _all_heads(layout) if name.split(".")[0] == str(int(layer))]
        return []

    def sample_args(
        model_id: str, label_value: str, count: float, seed_value: float, step_count: float, cfg: float,
    ) -> tuple:
        return model_id or "", label_value, int(count), int(seed_value or 0), int(step_count), float(cfg)

    def run_both(
        model_id: str, label_value: str, count: float, seed_value: float, step_count: float, cfg: float,
        pag: float, selected: list[str], strength: float, progress: gr.Progress = PROGRESS,
    ) -> tuple:
        common = sample_args(model_id, label_value, count, seed_value, step_count, cfg)
        base_image, base_info = _with_progress(
            client, progress, "baseline", "guidance_sample", *common, 0.0, "none", 0.0
        )
        guided, guided_info = _with_progress(
            client, progress, "guided", "guidance_sample", *common, float(pag), _spec(selected), float(strength),
        )
        return base_image, guided, _score_table(base_info, guided_info)

    def run_search(
        model_id: str, label_value: str, seeds: float, round_count: float, k: float, strength: float, pag: float,
        cfg: float, step_count: float, objective_name: str, progress: gr.Progress = PROGRESS,
    ) -> tuple:
        result = _with_progress(
            client, progress, "HeadHunter", "guidance_search", model_id or "", label_value, int(seeds),
            int(round_count), int(k), float(strength), float(pag), float(cfg), int(step_count), objective_name,
        )
        note = " (cancelled: heads chosen so far)" if result.get("cancelled") else ""
        return result["heads"] + note, result

    def cancel_running() -> None:
        call_backend(client, "guidance_cancel")
        gr.Info("Cancelling after the current step…")

    def apply_found_heads(text: str, selected: list[str], layout: dict) -> tuple:
        names = [name for name in text.split(" ")[0].split(",") if name in _all_heads(layout)] if text else []
        if not names:  # nothing found (e.g. cancelled during the baseline): keep the user's heads
            return selected, "HeadHunter has found no heads yet; your selection is unchanged."
        return names, "Heads found by HeadHunter."

    def save(selected: list[str], strength: float, model_id: str) -> tuple:
        record = {"model": model_id or config.models[0], "heads": _spec(selected), "u": strength}
        path = Path(tempfile.mkdtemp(prefix="headset-")) / "head_set.json"
        path.write_text(json.dumps(record, indent=1))
        return gr.File(str(path), visible=True), gr.Code(apply_snippet(record), visible=True)

    def load(file: Any, layout: dict) -> tuple:
        try:
            record = json.loads(Path(file if isinstance(file, str) else file.name).read_text())
            return *read_head_set(record, layout), "Head set loaded."
        except (OSError, ValueError, ServiceError) as error:
            return gr.skip(), gr.skip(), f"⚠️ **Not loaded:** {error}"

    def fetch_atlas(model_id: str, progress: gr.Progress = PROGRESS) -> tuple:
        return show_atlas(_with_progress(client, progress, "head atlas", "guidance_head_effects", model_id or "", ""))

    def pick_cell(
        found_atlas: dict | None, model_id: str, label_value: str, count: float, seed_value: float, step_count: float,
        cfg: float, pag: float, selected: list[str], strength: float, event: gr.SelectData,
        progress: gr.Progress = PROGRESS,
    ) -> tuple:
        cell = atlas_cell(found_atlas, *event.index) if found_atlas else None
        if cell is None:
            return gr.skip(), gr.skip(), gr.skip()
        task, head = cell
        common = (*sample_args(model_id, label_value, count, seed_value, step_count, cfg), float(pag),
                  _spec(selected), float(strength))
        before, before_info = _with_progress(client, progress, "as set", "guidance_sample", *common, "")
        after, after_info = _with_progress(client, progress, f"{head} off", "guidance_sample", *common, head)
        return before, after, clicked_markdown(found_atlas, task, head, before_info, after_info)

    def effect_grid_for(model_id: str, label_value: str, seed_value: float, step_count: float) -> Any:
        image, _ = call_backend(
            client, "guidance_effect_grid", model_id or "", label_value, int(seed_value or 0), int(step_count)
        )
        return image

    layout_state = gr.State({})
    atlas_outputs = [*atlas.outputs, before_image, after_image, effect_grid]
    layout_outputs = [layout_state, heads, label, preset_layer, objective, top_k, grid_style, heads_note,
                      baseline_image, guided_image, scores, *atlas_outputs]
    gr.on(None, load_layout, model, layout_outputs, **queue)  # on page load and whenever the model changes
    apply_preset.click(pick_preset, [preset, preset_layer, layout_state], heads, queue=False)
    sample_inputs = [model, label, n, seed, steps, cfg_scale, pag_scale, heads, u]
    sample.click(run_both, sample_inputs, [baseline_image, guided_image, scores], **queue)
    for control in (label, n, seed, steps, cfg_scale, pag_scale, heads, u):  # results follow their inputs
        control.change(lambda: (None, None, "", None, None, ""), None,
                       [baseline_image, guided_image, scores, before_image, after_image, atlas.clicked], queue=False)
    search.click(lambda: gr.Button(interactive=True), None, cancel, queue=False).then(
        run_search, [model, label, search_seeds, rounds, top_k, u, pag_scale, cfg_scale, steps, objective],
        [found, search_result], **queue,
    ).then(lambda: gr.Button(interactive=False), None, cancel, queue=False)
    cancel.click(cancel_running, None, None, queue=False)
    apply_found.click(apply_found_heads, [found, heads, layout_state], [heads, heads_note], queue=False)
    save_heads.click(save, [heads, u, model], [heads_file, snippet], queue=False)
    load_heads.upload(load, [load_heads, layout_state], [heads, u, heads_note], queue=False)
    atlas.compute.click(fetch_atlas, model, atlas.outputs, **queue)
    atlas.image.select(pick_cell, [atlas.state, *sample_inputs], [before_image, after_image, atlas.clicked], **queue)
    show_effect_grid.click(effect_grid_for, [model, label, seed, steps], effect_grid, **queue)
    for control in (label, seed, steps):
        control.change(lambda: None, None, effect_grid, queue=False)


def _all_heads(layout: dict) -> list[str]:
    """Every head of the layout's grid as "layer.head"."""
    return [f"{layer}.{head}" for layer in range(layout.get("layers", 0)) for head in range(layout.get("heads", 0))]


def _spec(selected: list[str]) -> str:
    """The checkbox selection as a head list."""
    return ",".join(selected) or "none"


def _heads_origin(default: list[str]) -> str:
    """The note under the head grid after a model loads."""
    if not default:
        return ""
    return f"Preselected: the shipped HeadHunter head set ({', '.join(default)})."


def read_head_set(record: Any, layout: dict) -> tuple[list[str], float]:
    """(heads as checkbox values, u) of a saved head-set record; ``ValueError``/``ServiceError`` say what is wrong."""
    if not isinstance(record, dict) or "heads" not in record:
        raise ValueError('a head-set file is a JSON object like {"model": "fashion-dit", "heads": "3.4,2.2", "u": 1}')
    if not layout:
        raise ValueError("the model's head grid has not loaded yet; try again in a moment")
    model_note = f" (the file is for {record['model']!r})" if record.get("model") else ""
    try:
        heads = parse_heads(str(record["heads"]), layout["layers"], layout["heads"], layout.get("stack", "model"))
    except ServiceError as error:
        raise ValueError(f"{error}{model_note}") from error
    strength = record.get("u", 1.0)
    if isinstance(strength, bool) or not isinstance(strength, (int, float)) or not 0 <= strength <= 1:
        raise ValueError(f"u must be a number between 0 and 1, not {strength!r}")
    return [f"{layer}.{head}" for layer, head in heads], float(strength)


SNIPPET_IMPORTS = "import json\n\nimport torch\n"  # the snippet's, run where the model is (this module has no torch)


def apply_snippet(record: dict) -> str:
    """Python that applies a saved head set with HeadLab's SoftPAG processors (the README snippet)."""
    if record["model"] == "fashion-dit":
        load = ('from backends.guidance.adapters import ASSETS, EmbeddedDiT\n\n'
                'model = EmbeddedDiT.load(ASSETS, "cpu", torch.float32)  # HeadLab\'s DiT, SoftPAG installed\n'
                'condition = "Sneaker"')
    else:
        load = ('from diffusers import DiffusionPipeline\n'
                'from backends.guidance.adapters import model_for_pipeline\n\n'
                f'pipeline = DiffusionPipeline.from_pretrained({record["model"]!r}, dtype=torch.float16)\n'
                f'model = model_for_pipeline(pipeline, {record["model"]!r}, "cuda", torch.float16)  '
                '# installs the SoftPAG processors\n'
                'condition = "a photo of a red fox in the snow"')
    return f"""{SNIPPET_IMPORTS}
from backends.core.heads import parse_heads
from backends.guidance.sampler import guided_sample
from backends.guidance.softpag import strengths_for
{load}

record = json.load(open("head_set.json"))  # {json.dumps(record)}
heads = parse_heads(record["heads"], model.layers, model.heads)
strengths = strengths_for([heads], record["u"], model.layers, model.heads)
# the heads travel with the call: the transformer gets cross_attention_kwargs={{"perturbation": ...}} each step
images = guided_sample(model, condition, seeds=[0, 1, 2, 3], steps=20, pag_scale=3.0, strengths=strengths)
print(images.shape)  # [4, channels, height, width] in [-1, 1]
"""


# -- the head atlas ---------------------------------------------------------------------------------------------------
def clicked_markdown(atlas: dict, task: str, head: str, before: dict, after: dict) -> str:
    """What the atlas says about ``head`` and what switching it off did to the user's sample."""
    name = after["objective"]["name"]
    change = after["objective"]["mean"] - before["objective"]["mean"]
    return (f"{cell_summary(atlas, task, head)} On your sample, {name} {before['objective']['mean']:.4f} → "
            f"{after['objective']['mean']:.4f} ({change:+.4f}) with {head} off.")


def _with_progress(client: Client, progress: gr.Progress, stage: str, endpoint: str, *args: Any) -> Any:
    """Call ``endpoint`` in a worker thread while mirroring the service's step counter in ``progress``."""
    with ThreadPoolExecutor(max_workers=1) as pool:
        future = pool.submit(call_backend, client, endpoint, *args)
        progress(0.0, desc=f"{stage}: starting")
        while not future.done():
            try:
                state = client.call("guidance_progress")
            except ServiceError:
                state = {}
            state = next((job for job in state.get("jobs", []) if job["running"] == endpoint), {})
            if state.get("total"):
                message = state.get("message") or f"step {state['done']}/{state['total']}"
                progress(state["done"] / state["total"], desc=f"{stage}: {message}")
            time.sleep(POLL_SECONDS)
        return future.result()


def _score_table(baseline: dict, guided: dict) -> str:
    """Markdown: the objective of each sample, baseline vs guided, with means and timings."""
    name = guided["objective"]["name"]
    settings = (f"heads {guided['heads']}, u = {guided['u']}, PAG {guided['pag_scale']}, "
                f"CFG {guided['cfg_scale']}, {guided['steps']} steps")
    lines = [f"**{name}** per sample ({settings})", "", "| seed | baseline | guided |", "|---|---|---|"]
    rows = zip(guided["seeds"], baseline["objective"]["values"], guided["objective"]["values"], strict=True)
    for seed, before, after in rows:
        lines.append(f"| {seed} | {before:.4f} | {after:.4f} |")
    lines.append(f"| **mean** | **{baseline['objective']['mean']:.4f}** | **{guided['objective']['mean']:.4f}** |")
    lines.append("")
    lines.append(f"Sampling took {baseline['seconds']:.1f} s (baseline) and {guided['seconds']:.1f} s (guided).")
    return "\n".join(lines)


def _grid_style(heads: int) -> str:
    """CSS that lays the head checkboxes out as a grid with one row per layer."""
    return (
        "<style>#guidance-heads .wrap{display:grid;"
        f"grid-template-columns:repeat({heads},max-content);gap:2px 8px;}}</style>"
    )
