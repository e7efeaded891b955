"""The Guidance panel's public API (torch-free; implemented by :mod:`backends.guidance.service`)."""

from __future__ import annotations

from PIL import Image

from backends.core.api import PanelAPI, endpoint


class GuidanceAPI(PanelAPI):
    """Per-head SoftPAG perturbation guidance of a diffusion transformer, and HeadHunter's head search."""

    panel = "guidance"

    @endpoint(layout="json")
    def guidance_layout(self, model: str = "") -> dict:
        """The model's attention grid (layers × heads), its conditioning (classes or prompt) and its objectives.

        Args:
            model: "" for the embedded Fashion-MNIST DiT, or a diffusers hub id (see spaces.yml)

        Returns:
            layout: layers, heads, conditioning, classes (class-conditional models) and objectives
        """
        ...

    @endpoint(grid="image", result="json")
    def guidance_sample(self, model: str = "", label: str = "Sneaker", n: int = 8, seed: int = 0, steps: int = 20,
                        cfg_scale: float = 1.0, pag_scale: float = 3.0, heads: str = "none",
                        u: float = 1.0) -> tuple[Image.Image, dict]:
        """A grid of samples guided by classifier-free guidance and by SoftPAG on chosen heads.

        Args:
            model: "" for the embedded Fashion-MNIST DiT, or a diffusers hub id
            label: a class name (embedded model, e.g. "Sneaker") or a prompt (text-to-image models)
            n: how many samples (seeds seed … seed+n−1)
            seed: the first seed
            steps: sampling steps
            cfg_scale: classifier-free guidance scale (1 = none)
            pag_scale: perturbed-attention guidance scale on the chosen heads (0 = none)
            heads: the perturbed heads, comma-separated "layer.head" ("2.1,3.0"), or "none"
            u: SoftPAG strength, 0 (attention unchanged) to 1 (attention replaced by identity)

        Returns:
            grid: the samples as one image
            result: grid geometry (rows, cols, tile, pad), seeds, settings, objective per sample and seconds
        """
        ...

    @endpoint(search="json")
    def guidance_search(self, model: str = "", label: str = "Sneaker", seeds: int = 4, rounds: int = 1,
                        top_k: int = 3, u: float = 1.0, pag_scale: float = 3.0, cfg_scale: float = 1.0,
                        steps: int = 20, objective: str = "confidence") -> dict:
        """HeadHunter: greedy rounds that keep the heads whose perturbation best serves an objective.

        Args:
            model: "" for the embedded Fashion-MNIST DiT, or a diffusers hub id
            label: a class name or a prompt
            seeds: seeds each candidate head is scored on
            rounds: greedy rounds (each adds top_k heads to the chosen set)
            top_k: heads kept per round
            u: SoftPAG strength of the perturbation, 0 to 1
            pag_scale: perturbed-attention guidance scale
            cfg_scale: classifier-free guidance scale
            steps: sampling steps per candidate
            objective: what the heads should serve (guidance_layout lists them, e.g. "confidence")

        Returns:
            search: the chosen heads per round with their scores, and the final head set
        """
        ...

    @endpoint(progress="json")
    def guidance_progress(self) -> dict:
        """What the service computes now: the running endpoint, steps done of the total, a message.

        Returns:
            progress: running, done, total and message
        """
        ...

    @endpoint(cancelled="json")
    def guidance_cancel(self) -> dict:
        """Stop the running sampling or search after its current step (a search keeps the heads chosen so far).

        Returns:
            cancelled: which endpoint was cancelled, or null when nothing was running
        """
        ...
