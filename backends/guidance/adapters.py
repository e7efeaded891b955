"""Guidable models: a diffusers transformer with SoftPAG processors, plus how to condition, denoise and decode.

One small interface for the embedded Fashion-MNIST DiT and the hub models (DiT-XL-2-256, PixArt-Σ, SD3):
``encode`` gives the conditional and unconditional model inputs, ``predict`` the transformer's ε / velocity,
``decode`` images in [-1, 1]; the scheduler comes from the model's own diffusers configuration.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np
import torch
from diffusers import (
    DiffusionPipeline,
    FlowMatchEulerDiscreteScheduler,
    PixArtSigmaPipeline,
    PixArtTransformer2DModel,
)
from diffusers.schedulers.scheduling_utils import SchedulerMixin

from backends.core.fashion_classifier import FashionClassifier
from backends.core.fashion_mnist import CLASS_NAMES
from backends.core.heads import HeadStack
from backends.core.service import ServiceError
from backends.guidance.data import load_split, to_model_range
from backends.guidance.model import NULL_CLASS, load_classifier, load_dit
from backends.guidance.softpag import Perturbation, install_softpag

ASSETS = Path(__file__).resolve().parents[2] / "assets" / "guidance"
EMBEDDED_MODEL = "fashion-dit"
PIXART_SIGMA_BASE = "PixArt-alpha/pixart_sigma_sdxlvae_T5_diffusers"
HUB_MODELS = (
    "facebook/DiT-XL-2-256",
    "PixArt-alpha/PixArt-Sigma-XL-2-512-MS",
    "stabilityai/stable-diffusion-3-medium-diffusers",
)


class GuidedModel:
    """A transformer (SoftPAG installed) with its scheduler; subclasses say how to condition and decode."""

    name: str = ""
    #: "class" (a label picks what to draw) or "prompt" (free text)
    conditioning = "class"
    #: the transformer's forward argument that diffusers hands to the attention processors
    attention_kwargs_name = "cross_attention_kwargs"

    def __init__(self, transformer: torch.nn.Module, scheduler: SchedulerMixin, device: str, dtype: torch.dtype):
        self.device, self.dtype = torch.device(device), dtype
        self.transformer = transformer.to(self.device).eval()
        if next(transformer.parameters()).dtype != dtype:
            self.transformer.to(dtype)
        self.stack: HeadStack = install_softpag(self.transformer, self.name)
        self._scheduler_class, self._scheduler_config = type(scheduler), scheduler.config

    @property
    def layers(self) -> int:
        """Number of perturbable attention layers."""
        return self.stack.layers

    @property
    def heads(self) -> int:
        """Heads per attention layer."""
        return self.stack.heads

    def attention_kwargs(self, perturbation: Perturbation | None) -> dict[str, Any]:
        """The transformer keyword that carries ``perturbation`` to this call's attention processors."""
        return {} if perturbation is None else {self.attention_kwargs_name: {"perturbation": perturbation}}

    def fingerprint(self) -> str:
        """What this model's results depend on: its name (and, for files HeadLab ships, their size and date)."""
        return self.name

    def new_scheduler(self) -> SchedulerMixin:
        """A fresh scheduler (schedulers keep per-run state, so every sampling run gets its own)."""
        return self._scheduler_class.from_config(self._scheduler_config)

    def latent_shape(self) -> tuple[int, int, int]:
        """(channels, height, width) of the latents the transformer denoises."""
        config = self.transformer.config
        return config.in_channels, config.sample_size, config.sample_size

    def initial_latents(self, seeds: list[int]) -> torch.Tensor:
        """Standard normal latents, one per seed, drawn on the CPU so a seed gives the same start on any device."""
        shape = self.latent_shape()
        noise = [torch.randn(shape, generator=torch.Generator().manual_seed(seed)) for seed in seeds]
        return torch.stack(noise).to(self.device)

    def encode(self, condition: str, count: int) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """(conditional, unconditional) transformer inputs for ``count`` samples of ``condition``."""
        raise NotImplementedError

    def predict(
        self, latents: torch.Tensor, timestep: torch.Tensor, inputs: dict[str, torch.Tensor],
        perturbation: Perturbation | None = None,
    ) -> torch.Tensor:
        """The transformer's prediction (ε or velocity, latent channels only) for a batch of latents, with the
        call's own ``perturbation`` of attention heads (None: plain attention)."""
        raise NotImplementedError

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Images [B, C, H, W] in [-1, 1] (float32) from final latents."""
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:
        """What the UI needs: layers, heads, how to condition and (for class models) the class names."""
        return {"model": self.name, **self.stack.describe(), "conditioning": self.conditioning}

    def _timesteps(self, timestep: torch.Tensor, batch: int) -> torch.Tensor:
        return timestep.to(self.device).expand(batch)

    def _latent_prediction(self, output: torch.Tensor) -> torch.Tensor:
        """Drop a learned-variance half of the channels when the transformer predicts one."""
        channels = self.latent_shape()[0]
        return output[:, :channels] if output.shape[1] == 2 * channels else output


class EmbeddedDiT(GuidedModel):
    """HeadLab's class-conditional Fashion-MNIST DiT (rectified flow in pixel space) and its classifier."""

    name = EMBEDDED_MODEL

    def __init__(
        self, dit: torch.nn.Module, classifier: FashionClassifier, device: str, dtype: torch.dtype,
        weights_file: Path | None = None,
    ):
        self.weights_file = weights_file
        self._weights_digest = hashlib.sha256(weights_file.read_bytes()).hexdigest()[:16] if weights_file else None
        scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=1.0)
        super().__init__(dit, scheduler, device, dtype)
        self.classifier = classifier.to(self.device).eval()
        self.class_names = CLASS_NAMES
        self._test_features: np.ndarray | None = None

    @classmethod
    def load(cls, folder: Path, device: str, dtype: torch.dtype) -> EmbeddedDiT:
        """The DiT and classifier saved in ``folder`` by the training script."""
        weights = folder / "dit.safetensors"
        if not weights.exists():
            raise FileNotFoundError(f"no embedded DiT at {weights}: run `python -m backends.guidance.train`")
        return cls(load_dit(weights), load_classifier(folder / "classifier.safetensors"), device, dtype, weights)

    def fingerprint(self) -> str:
        """The name, the first 16 hex digits of the DiT weights file's SHA-256, and the dtype."""
        if self._weights_digest is None:
            return self.name
        return f"{self.name}-{self._weights_digest}-{str(self.dtype).removeprefix('torch.')}"

    def test_features(self) -> np.ndarray:
        """Classifier features of the Fashion-MNIST test set (computed once), the reference of ``frechet``."""
        if self._test_features is None:
            images, _ = load_split("test", self.device)
            self._test_features = self.classifier.classify(to_model_range(images))[1]
        return self._test_features

    def class_index(self, label: str) -> int:
        """The class named (or numbered) ``label``; case and spaces do not matter."""
        text = label.strip().lower()
        if text.isdigit() and int(text) < len(self.class_names):
            return int(text)
        names = [name.lower() for name in self.class_names]
        for index, name in enumerate(names):
            if text in (name, *name.split("/")):
                return index
        raise ServiceError(f"unknown class {label!r}; choose one of {', '.join(self.class_names)} (or 0–9)")

    def encode(self, condition: str, count: int) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """Class labels for the conditional branch, the null class for the unconditional one."""
        labels = torch.full((count,), self.class_index(condition), device=self.device)
        return {"class_labels": labels}, {"class_labels": torch.full_like(labels, NULL_CLASS)}

    def predict(
        self, latents: torch.Tensor, timestep: torch.Tensor, inputs: dict[str, torch.Tensor],
        perturbation: Perturbation | None = None,
    ) -> torch.Tensor:
        """Velocity (noise − image); the scheduler's timesteps are 1000·t, as in training."""
        timesteps = self._timesteps(timestep, latents.shape[0])
        return self.transformer(
            latents.to(self.dtype), timestep=timesteps, **inputs, **self.attention_kwargs(perturbation)
        ).sample

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Pixel space already: clip to [-1, 1]."""
        return latents.float().clamp(-1, 1)

    def describe(self) -> dict[str, Any]:
        """Layers, heads and the ten Fashion-MNIST classes."""
        return {**super().describe(), "classes": list(self.class_names)}


class PipelineModel(GuidedModel):
    """A hub model taken from its diffusers pipeline (transformer, VAE, scheduler, text encoders).

    The pipeline is expected in ``dtype`` already (``from_pretrained(..., dtype=dtype)``).
    """

    def __init__(self, pipeline: DiffusionPipeline, name: str, device: str, dtype: torch.dtype):
        self.pipeline = pipeline.to(device)
        self.name = name
        super().__init__(pipeline.transformer, pipeline.scheduler, device, dtype)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """VAE decoding (with the VAE's scaling and shift factors)."""
        vae = self.pipeline.vae
        latents = latents / vae.config.scaling_factor + (getattr(vae.config, "shift_factor", None) or 0.0)
        with torch.no_grad():
            return vae.decode(latents.to(vae.dtype)).sample.float().clamp(-1, 1)


class HubDiT(PipelineModel):
    """DiT-XL-2 (ImageNet classes, latent space, ε with learned variance)."""

    def class_index(self, label: str) -> int:
        """An ImageNet class id or one of its names ("golden retriever")."""
        text = label.strip()
        classes = self.transformer.config.num_embeds_ada_norm
        if text.isdigit() and int(text) < classes:
            return int(text)
        names = {name.lower(): index for name, index in self.pipeline.labels.items()}
        if text.lower() not in names:
            raise ServiceError(f"unknown class {label!r}: give a name like 'golden retriever' or 0–{classes - 1}")
        return names[text.lower()]

    def encode(self, condition: str, count: int) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """Class labels; the null class (index = number of classes) for the unconditional branch."""
        labels = torch.full((count,), self.class_index(condition), device=self.device)
        null = torch.full_like(labels, self.transformer.config.num_embeds_ada_norm)
        return {"class_labels": labels}, {"class_labels": null}

    def predict(
        self, latents: torch.Tensor, timestep: torch.Tensor, inputs: dict[str, torch.Tensor],
        perturbation: Perturbation | None = None,
    ) -> torch.Tensor:
        """ε (the learned-variance channels are dropped)."""
        timesteps = self._timesteps(timestep, latents.shape[0])
        output = self.transformer(
            latents.to(self.dtype), timestep=timesteps, **inputs, **self.attention_kwargs(perturbation)
        ).sample
        return self._latent_prediction(output)

    def describe(self) -> dict[str, Any]:
        """Layers, heads and the ImageNet class names."""
        return {**super().describe(), "classes": sorted(self.pipeline.labels, key=self.pipeline.labels.get)}


class HubPixArt(PipelineModel):
    """PixArt-Σ / PixArt-α (T5 prompt, latent space, ε with learned variance)."""

    conditioning = "prompt"

    def encode(self, condition: str, count: int) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """T5 embeddings and masks of the prompt and of the empty negative prompt."""
        embeds, mask, negative, negative_mask = self.pipeline.encode_prompt(
            condition, do_classifier_free_guidance=True, negative_prompt="", num_images_per_prompt=count,
            device=self.device, clean_caption=False,
        )
        return (
            {"encoder_hidden_states": embeds, "encoder_attention_mask": mask},
            {"encoder_hidden_states": negative, "encoder_attention_mask": negative_mask},
        )

    def predict(
        self, latents: torch.Tensor, timestep: torch.Tensor, inputs: dict[str, torch.Tensor],
        perturbation: Perturbation | None = None,
    ) -> torch.Tensor:
        """ε (the learned-variance channels are dropped)."""
        timesteps = self._timesteps(timestep, latents.shape[0])
        output = self.transformer(
            latents.to(self.dtype), timestep=timesteps, added_cond_kwargs={"resolution": None, "aspect_ratio": None},
            **inputs, **self.attention_kwargs(perturbation),
        ).sample
        return self._latent_prediction(output)


class HubSD3(PipelineModel):
    """Stable Diffusion 3 (MM-DiT joint attention, CLIP + T5 prompt, rectified flow in latent space)."""

    conditioning = "prompt"
    attention_kwargs_name = "joint_attention_kwargs"

    def encode(self, condition: str, count: int) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """Joint text embeddings and pooled embeddings of the prompt and of the empty negative prompt."""
        embeds, negative, pooled, negative_pooled = self.pipeline.encode_prompt(
            prompt=condition, prompt_2=None, prompt_3=None, device=self.device, num_images_per_prompt=count,
            do_classifier_free_guidance=True, negative_prompt="",
        )
        return (
            {"encoder_hidden_states": embeds, "pooled_projections": pooled},
            {"encoder_hidden_states": negative, "pooled_projections": negative_pooled},
        )

    def predict(
        self, latents: torch.Tensor, timestep: torch.Tensor, inputs: dict[str, torch.Tensor],
        perturbation: Perturbation | None = None,
    ) -> torch.Tensor:
        """Velocity."""
        timesteps = self._timesteps(timestep, latents.shape[0])
        return self.transformer(
            hidden_states=latents.to(self.dtype), timestep=timesteps, **inputs, **self.attention_kwargs(perturbation)
        ).sample


def model_for_pipeline(pipeline: DiffusionPipeline, name: str, device: str, dtype: torch.dtype) -> PipelineModel:
    """The adapter for a DiT, PixArt or SD3 pipeline (by its transformer's class)."""
    kinds = {
        "DiTTransformer2DModel": HubDiT,
        "PixArtTransformer2DModel": HubPixArt,
        "SD3Transformer2DModel": HubSD3,
    }
    transformer = getattr(pipeline, "transformer", None)
    adapter = kinds.get(type(transformer).__name__)
    if adapter is None:
        raise ValueError(f"{name}: only DiT, PixArt and SD3 pipelines are supported, not {type(pipeline).__name__}")
    return adapter(pipeline, name, device, dtype)


def load_guided_model(model_id: str, device: str, dtype: torch.dtype) -> GuidedModel:
    """The embedded model (``fashion-dit``) or a hub pipeline (needs the hub or a local cache, and ideally a GPU)."""
    if model_id == EMBEDDED_MODEL:
        return EmbeddedDiT.load(ASSETS, device, torch.float32 if device == "cpu" else dtype)
    if "pixart-sigma" in model_id.lower():
        # PixArt-Σ checkpoints ship the transformer; VAE, T5 and scheduler come from the shared Σ repository
        transformer = PixArtTransformer2DModel.from_pretrained(model_id, subfolder="transformer", dtype=dtype)
        pipeline = PixArtSigmaPipeline.from_pretrained(PIXART_SIGMA_BASE, transformer=transformer, dtype=dtype)
    else:
        pipeline = DiffusionPipeline.from_pretrained(model_id, dtype=dtype)
    return model_for_pipeline(pipeline, model_id, device, dtype)
