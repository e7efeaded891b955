"""The Guidance tab: per-head SoftPAG perturbation guidance and HeadHunter head search on a diffusion transformer.

Talks to the guidance service only through the client (endpoints ``guidance_layout``, ``guidance_sample``,
``guidance_search``, ``guidance_progress``, ``guidance_cancel``).
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
from backends.core.service import ServiceError
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
objective (classifier confidence in the class, Fréchet distance, or a weight-free sharpness), keep the top k, repeat
R rounds. The paper searches with u = 1 and then lowers u to remove artifacts; it reports that heads specialise
(structure, style, lighting, colour).

Paper: Ahn et al., *Fine-Grained Perturbation Guidance via Attention Head Selection* (NeurIPS 2025),
[arXiv:2506.10978](https://arxiv.org/abs/2506.10978). PAG: Ahn et al. 2024, [arXiv:2403.17377](https://arxiv.org/abs/2403.17377).
"""

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
                load_heads = gr.UploadButton("Load head set", file_types=[".json"], size="sm")
            heads_file = gr.File(label="Saved head set", interactive=False, visible=False)
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
            cancel = gr.Button("Cancel", variant="stop")
            apply_found = gr.Button("Apply found heads to the grid")
        found = gr.Textbox(label="Found heads", interactive=False)
        search_result = gr.JSON(label="Search details")

    def load_layout(model_id: str) -> tuple:
        layout = call_backend(client, "guidance_layout", model_id or "")
        choices = [f"{layer}.{head}" for layer in range(layout["layers"]) for head in range(layout["heads"])]
        classes = layout.get("classes") or []
        objectives = list(layout["objectives"])
        label_value = DEFAULT_CLASS if DEFAULT_CLASS in classes else (classes or [DEFAULT_PROMPT])[0]
        return (
            choices,
            gr.CheckboxGroup(choices=choices, value=[]),
            gr.Dropdown(choices=classes, value=label_value),
            gr.Slider(maximum=layout["layers"] - 1, value=0),
            gr.Dropdown(choices=objectives, value=objectives[0]),
            gr.Slider(maximum=len(choices), value=min(3, len(choices))),
            _grid_style(layout["heads"]),
        )

    def pick_preset(choice: str, layer: float, all_choices: list[str]) -> list[str]:
        if choice == "All":
            return list(all_choices)
        if choice == "One layer":
            return [name for name in all_choices if name.split(".")[0] == str(int(layer))]
        return []

    def run_both(
        model_id: str, label_value: str, count: float, seed_value: float, step_count: float, cfg: float,
        pag: float, selected: list[str], strength: float, progress: gr.Progress = PROGRESS,
    ) -> tuple:
        common = (int(count), int(seed_value or 0), int(step_count), float(cfg))
        spec = ",".join(selected) or "none"
        base_image, base_info = _with_progress(
            client, progress, "baseline", "guidance_sample", model_id or "", label_value, *common, 0.0, "none", 0.0
        )
        guided, guided_info = _with_progress(
            client, progress, "guided", "guidance_sample", model_id or "", label_value, *common, float(pag), spec,
            float(strength),
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

    def apply_found_heads(text: str, all_choices: list[str]) -> list[str]:
        names = text.split(" ")[0].split(",") if text and not text.startswith("none") else []
        return [name for name in names if name in all_choices]

    def save(selected: list[str], strength: float, model_id: str) -> gr.File:
        record = {"model": model_id or "", "heads": ",".join(selected) or "none", "u": strength}
        path = Path(tempfile.mkdtemp(prefix="headset-")) / "head_set.json"
        path.write_text(json.dumps(record, indent=1))
        return gr.File(str(path), visible=True)

    def load(file: Any, all_choices: list[str]) -> tuple:
        try:
            record = json.loads(Path(file if isinstance(file, str) else file.name).read_text())
            names = [] if record.get("heads", "none") == "none" else str(record["heads"]).split(",")
        except (OSError, ValueError, KeyError, AttributeError) as error:
            raise gr.Error(f"Not a head-set file: {error}") from error
        unknown = [name for name in names if name not in all_choices]
        if unknown:
            raise gr.Error(f"Heads {', '.join(unknown)} do not exist in this model (load the right model first).")
        return names, float(record.get("u", 1.0))

    all_choices = gr.State([])
    layout_outputs = [all_choices, heads, label, preset_layer, objective, top_k, grid_style]
    gr.on(None, load_layout, model, layout_outputs, **queue)  # on page load and whenever the model changes
    apply_preset.click(pick_preset, [preset, preset_layer, all_choices], heads, queue=False)
    sample.click(
        run_both, [model, label, n, seed, steps, cfg_scale, pag_scale, heads, u],
        [baseline_image, guided_image, scores], **queue,
    )
    search.click(
        run_search, [model, label, search_seeds, rounds, top_k, u, pag_scale, cfg_scale, steps, objective],
        [found, search_result], **queue,
    )
    cancel.click(cancel_running, None, None, queue=False)
    apply_found.click(apply_found_heads, [found, all_choices], heads, queue=False)
    save_heads.click(save, [heads, u, model], heads_file, queue=False)
    load_heads.upload(load, [load_heads, all_choices], [heads, u], queue=False)


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
            if state.get("running") == endpoint and state.get("total"):
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
