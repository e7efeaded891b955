"""A minimal service used to test the core contract and both transports without loading a model."""

from __future__ import annotations

from PIL import Image

from backends.core.service import Service, ServiceError, endpoint


class EchoService(Service):
    """Echoes text and mirrors images."""

    panel = "echo"
    default_model = "echo"

    def load_model(self, model_id: str) -> str:
        """The "model" is its own name; unknown names are rejected."""
        if model_id != "echo":
            raise ServiceError(f"unknown model {model_id!r}")
        return model_id

    @endpoint("json")
    def echo_text(self, model: str, text: str, times: int = 2) -> dict:
        """Repeat ``text``."""
        if not text:
            raise ServiceError("Please type some text.")
        return {"model": self.model(model), "text": text * times}

    @endpoint("image", "json")
    def mirror(self, image: Image.Image | None, model: str) -> tuple[Image.Image, dict]:
        """Mirror ``image`` left to right."""
        if image is None:
            raise ServiceError("Please give an image.")
        return image.transpose(Image.Transpose.FLIP_LEFT_RIGHT), {"size": list(image.size), "mode": image.mode}

    @endpoint("json")
    def divide(self, model: str, a: float, b: float) -> dict:
        """A bug in waiting: dividing by zero must come back as a ServiceError, not a crash."""
        return {"ratio": a / b}
