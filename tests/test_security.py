"""Security rules that hold for the whole code base: no remote code, no pickled weights, bounded caches, loopback."""

from __future__ import annotations

import ast
from pathlib import Path

from PIL import Image

from backends.core.service import MAX_IMAGE_PIXELS
from tests.conftest import ROOT
from tests.echo_service import EchoService

SOURCES = [path for folder in ("backends", "ui") for path in (ROOT / folder).rglob("*.py")] + [ROOT / "app.py"]


def calls_in(path: Path) -> list[ast.Call]:
    return [node for node in ast.walk(ast.parse(path.read_text())) if isinstance(node, ast.Call)]


def keyword(call: ast.Call, name: str) -> ast.expr | None:
    return next((kw.value for kw in call.keywords if kw.arg == name), None)


def test_remote_code_is_never_trusted():
    for path in SOURCES:
        for call in calls_in(path):
            value = keyword(call, "trust_remote_code")
            assert value is None or (isinstance(value, ast.Constant) and value.value is False), f"{path}:{call.lineno}"


def test_torch_load_only_reads_weights():
    for path in SOURCES:
        for call in calls_in(path):
            func = call.func
            if isinstance(func, ast.Attribute) and func.attr == "load" and getattr(func.value, "id", "") == "torch":
                value = keyword(call, "weights_only")
                assert isinstance(value, ast.Constant) and value.value is True, f"{path}:{call.lineno}"


def test_shipped_weights_are_safetensors():
    weights = [p for p in (ROOT / "assets").rglob("*") if p.suffix in {".pt", ".pth", ".bin", ".pkl", ".ckpt"}]
    assert weights == []
    assert list((ROOT / "assets").rglob("*.safetensors"))


def test_model_cache_is_bounded():
    class ManyModels(EchoService):
        max_cached_models = 2

        def load_model(self, model_id: str) -> str:
            return model_id

    service = ManyModels()
    for name in ("a", "b", "c", "a"):
        service.model(name)
    assert service.info()["loaded_models"] == ["c", "a"]


def test_decoding_huge_images_is_refused():
    assert 0 < Image.MAX_IMAGE_PIXELS <= MAX_IMAGE_PIXELS
