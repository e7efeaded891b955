"""The Guidance panel's public API (torch-free; implemented by :mod:`backends.guidance.service`)."""

from __future__ import annotations

from PIL import Image

from backends.core.api import PanelAPI, endpoint


class GuidanceAPI(PanelAPI):
    """Per-head SoftPAG perturbation guidance of a diffusion transformer, and HeadHunter's head search."""

    panel = "guidance"

    @endpoint(layout="json")
    def guidance_layout(self, model: str = "") -> dict:
        """The model's attention grid, its conditioning, objectives and default head selection.

        Args:
            model: model id; "" is the embedded fashion-dit.

        Returns:
            layout: ``model``, ``stack``, ``layers``, ``heads``, ``conditioning`` (class or prompt), ``classes``,
                ``objectives`` {name: description}, ``default_heads`` (the shipped HeadHunter set, or "none").
        """
        ...

    @endpoint(grid="image", result="json")
    def guidance_sample(
        self, model: str = "", label: str = "Sneaker", n: int = 8, seed: int = 0, steps: int = 20,
        cfg_scale: float = 1.0, pag_scale: float = 3.0, heads: str = "none", u: float = 1.0, heads_off: str = "",
    ) -> tuple[Image.Image, dict]:
        """A grid of samples guided by CFG and per-head SoftPAG, optionally with some heads switched off.

        Args:
            model: model id; "" is the embedded fashion-dit.
            label: class name or number (class models) or prompt (text-to-image models).
            n: number of samples (seeds seed … seed+n−1).
            seed: first seed.
            steps: sampler steps.
            cfg_scale: classifier-free guidance scale (1 = off).
            pag_scale: perturbation-guidance scale (0 = off).
            heads: heads perturbed in the guidance branch, a head list ("2.1,3.0", "L2H1", "3.*", "L3", "none").
            u: SoftPAG strength of those heads, 0–1.
            heads_off: heads switched off (perturbed with u = 1 in every branch) for this call only; "" = none.

        Returns:
            grid: the samples tiled into one image.
            result: settings, ``heads``, ``heads_off``, ``grid`` (rows, cols, tile, pad), ``objective`` (name,
                per-sample values, mean) and ``seconds``.
        """
        ...

    @endpoint(search="json")
    def guidance_search(
        self, model: str = "", label: str = "Sneaker", seeds: int = 4, rounds: int = 1, top_k: int = 3,
        u: float = 1.0, pag_scale: float = 3.0, cfg_scale: float = 1.0, steps: int = 20, objective: str = "confidence",
    ) -> dict:
        """HeadHunter: greedy rounds that keep the ``top_k`` heads whose perturbation best serves ``objective``.

        Args:
            model: model id; "" is the embedded fashion-dit.
            label: class name or number (class models) or prompt (text-to-image models).
            seeds: seeds per head set (M).
            rounds: greedy rounds (R).
            top_k: heads kept per round (k).
            u: SoftPAG strength while searching.
            pag_scale: perturbation-guidance scale.
            cfg_scale: classifier-free guidance scale (1 = off).
            steps: sampler steps.
            objective: what to maximise (see ``guidance_layout``'s objectives).

        Returns:
            search: ``heads`` chosen (a head list), ``rounds`` (added heads, scores of every candidate),
                ``baseline_score``, ``cancelled``, ``seconds``.
        """
        ...

    @endpoint(atlas="json")
    def guidance_head_effects(self, model: str = "", tasks: str = "") -> dict:
        """The head atlas: each objective's change when one head alone is switched off, on a fixed probe set.

        Computed on first use (≈ a minute on a CPU for the embedded model, with progress), then cached per model in
        memory and on disk.

        Args:
            model: model id; "" is the embedded fashion-dit.
            tasks: comma-separated objectives to report ("" = all of the model's objectives).

        Returns:
            atlas: ``model``, ``stack``, ``layers``, ``heads``, ``tasks``, ``metric`` {task: unit}, ``baseline``
                {task: score}, ``effects`` {task: layers×heads, score(head off) − baseline}, ``relative`` (the
                same in % of the baseline), ``specificity`` (layers×heads, 0–1), ``top`` {task: heads whose removal
                lowers it most}, ``probe``, ``seconds`` (of the computation), ``cached``.
        """
        ...

    @endpoint(grid="image", result="json")
    def guidance_effect_grid(self, model: str = "", label: str = "Sneaker", seed: int = 0, steps: int = 20) -> tuple:
        """One sample per head with that head switched off, all from the same seed, beside the unablated sample.

        Args:
            model: model id; "" is the embedded fashion-dit.
            label: class name or number (class models) or prompt (text-to-image models).
            seed: the one seed every tile starts from.
            steps: sampler steps.

        Returns:
            grid: row 0 holds the unablated sample, row 1 + l column h the sample with head l.h off.
            result: ``grid`` (rows, cols, tile, pad), ``objective`` (name, baseline, per-head layers×heads values).
        """
        ...

    @endpoint(progress="json")
    def guidance_progress(self) -> dict:
        """What the service is computing now.

        Returns:
            progress: the oldest running call's ``running`` (endpoint), ``done`` of ``total``, ``message``; and
                ``jobs``, every running call.
        """
        ...

    @endpoint(cancelled="json")
    def guidance_cancel(self) -> dict:
        """Stop the running calls after their current step (a search keeps the heads chosen so far).

        Returns:
            cancelled: the endpoints that were running, comma-separated (null when idle).
        """
        ...
