"""A minimal API and service used to test the core contract and both transports without loading a model."""

from __future__ import annotations

from PIL import Image

from backends.core.api import PanelAPI, endpoint
from backends.core.service import Service, ServiceError


class EchoAPI(PanelAPI):
    """Echoes text and mirrors images."""

    panel = "echo"

    @endpoint(echoed="json")
    def echo_text(self, model: str = "", text: str = "", times: int = 2) -> dict:
        """Repeat a text.

        Args:
            model: "" or "echo"
            text: the text to repeat
            times: how many times

        Returns:
            echoed: the model's name and the repeated text
        """
        ...

    @endpoint(mirrored="image", meta="json")
    def mirror(self, image: Image.Image | None, model: str = "") -> tuple[Image.Image, dict]:
        """Mirror an image left to right.

        Args:
            image: any image
            model: "" or "echo"

        Returns:
            mirrored: the mirrored image
            meta: the image's size and mode
        """
        ...

    @endpoint(ratio="json")
    def divide(self, model: str = "", a: float = 1.0, b: float = 1.0) -> dict:
        """A bug in waiting: dividing by zero must come back as an internal error, not a crash.

        Args:
            model: "" or "echo"
            a: the dividend
            b: the divisor

        Returns:
            ratio: a / b
        """
        ...


class EchoService(EchoAPI, Service):
    """The echo API, served."""

    default_model = "echo"

    def load_model(self, model_id: str) -> str:
        """The "model" is its own name; unknown names are rejected."""
        if model_id != "echo":
            raise ServiceError(f"unknown model {model_id!r}")
        return model_id

    def echo_text(self, model: str = "", text: str = "", times: int = 2) -> dict:
        if not text:
            raise ServiceError("Please type some text.")
        return {"model": self.model(model), "text": text * times}

    def mirror(self, image: Image.Image | None, model: str = "") -> tuple[Image.Image, dict]:
        if image is None:
            raise ServiceError("Please give an image.")
        return image.transpose(Image.Transpose.FLIP_LEFT_RIGHT), {"size": list(image.size), "mode": image.mode}

    def divide(self, model: str = "", a: float = 1.0, b: float = 1.0) -> dict:
        return {"ratio": a / b}
