"""Bad-input sweep: every API endpoint of every panel, fed odd values one parameter at a time.

Each call must either succeed (a sensible conversion, e.g. RGBA → RGB) or raise a ServiceError with a message —
never another exception, a hang or a crash — and the service must keep answering afterwards.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from PIL import Image

from backends.core.client import LocalClient
from backends.core.registry import SERVICES, service_class
from backends.core.service import ServiceError

SCENE = Image.fromarray((np.random.default_rng(0).random((96, 128, 3)) * 255).astype(np.uint8))
TEXT = "The cat sat on the mat. The cat"
SMALL = Image.fromarray(np.asarray(SCENE)[:24, :24])  # for the slow CBM3D comparison

#: a cheap, valid call of each endpoint; the sweep varies one argument at a time
BASELINES = {
    "heads_analyze": ("", TEXT),
    "heads_model_view": ("", TEXT, 0),
    "heads_map": ("", TEXT, "head", 0, 0, 0),
    "heads_export": ("", TEXT, "head", "png", 0, 0, 0),
    "heads_bertviz": ("", TEXT, "head"),
    "heads_scores": ("", TEXT),
    "heads_ablate": ("", TEXT, "0.1", "zero"),
    "heads_generate": ("", TEXT, 2),
    "guidance_layout": ("",),
    "guidance_sample": ("", "Sneaker", 1, 0, 2, 1.0, 1.0, "1.0", 1.0),
    "guidance_search": ("", "Sneaker", 1, 1, 1, 1.0, 3.0, 1.0, 2, "confidence"),
    "segment": (SCENE, "the bag", "", "", ""),
    "segment_attention": (SCENE, "the bag", "", "", -1, -1, 1),
    "segment_view": (SCENE, "the bag", "", "", "", 0.5, -1),
    "restore": (SCENE, "remove the noise", "", None, "", None),
    "restore_compare": (SCENE, "remove the noise", "", None, "", None),
    "restoration_region": (SCENE, "[10, 10, 60, 50]", None),
    "compare_cbm3d": (SMALL, None, "", None, ""),
    "understand": (SCENE, "remove the noise", ""),
}
NO_INPUT = {"cancel", "progress"}

BAD_MODEL_IDS = ["../../etc/passwd", "/etc/passwd", "https://evil.example/model.bin", "a" * 500, "gpt2; rm -rf /"]
BAD_TEXT = ["", "   ", "x" * 200_000, "\udcff\udcfe broken utf-8", "\x00\x01\x02", "{not json", "[[1e308, -5, 7]]"]
BAD_INT = [-5, 0, 10**9]
BAD_FLOAT = [math.nan, math.inf, -1e9, 1e9]


def odd_images() -> list[Image.Image | None]:
    """Images of every awkward kind: missing, empty, tiny, transparent, 16-bit, float, palette, 1-bit, huge."""
    rgb = np.asarray(SCENE)
    return [
        None,
        Image.new("RGB", (0, 0)),
        Image.new("RGB", (1, 1)),
        Image.fromarray(np.dstack([rgb, np.full(rgb.shape[:2], 128, np.uint8)])),
        Image.fromarray(rgb[..., 0].astype(np.uint16) * 257),
        Image.fromarray(rgb[..., 1].astype(np.float32) / 255.0),
        SCENE.convert("P"),
        SCENE.convert("1"),
        SCENE.convert("LA"),
        SCENE.convert("CMYK"),
        Image.new("RGB", (6000, 4000), (120, 130, 140)),
    ]


def bad_values(kind: str, name: str) -> list:
    """The odd values tried for one parameter."""
    if kind == "image":
        return odd_images()
    if kind == "int":
        return BAD_INT
    if kind == "float":
        return BAD_FLOAT
    return BAD_MODEL_IDS + ["", "no-such-model"] if name == "model" else BAD_TEXT


def sweep_cases() -> list[tuple[str, str]]:
    cases = []
    for panel in SERVICES:
        for spec in service_class(panel).endpoints():
            if spec.params and not any(spec.name.endswith(word) for word in NO_INPUT):
                cases.append((panel, spec.name))
    return cases


@pytest.fixture(scope="module")
def clients() -> dict[str, LocalClient]:
    return {panel: LocalClient(panel) for panel in SERVICES}


def test_every_endpoint_has_a_baseline():
    assert {name for _, name in sweep_cases()} == set(BASELINES)


@pytest.mark.parametrize(("panel", "name"), sweep_cases())
def test_endpoint_survives_bad_input(clients: dict[str, LocalClient], panel: str, name: str):
    client = clients[panel]
    spec = next(ep for ep in service_class(panel).endpoints() if ep.name == name)
    baseline = BASELINES[name]
    client.call(name, *baseline)  # valid call works
    outcomes = []
    for index, param in enumerate(spec.params):
        for value in bad_values(param.kind, param.name):
            args = list(baseline)
            args[index] = value
            try:
                client.call(name, *args)
                outcomes.append("ok")
            except ServiceError as error:
                assert str(error).strip(), f"{name}({param.name}={value!r:.60}) raised an empty error"
                outcomes.append("error")
    assert "error" in outcomes
    client.call(name, *baseline)  # still answering
    assert client.info()["status"] == "ok"


def test_malicious_model_ids_are_refused(clients: dict[str, LocalClient]):
    for panel, client in clients.items():
        model_position = next(
            (i, spec.name) for spec in service_class(panel).endpoints() for i, p in enumerate(spec.params)
            if p.name == "model" and spec.name in BASELINES
        )
        index, name = model_position
        for model_id in BAD_MODEL_IDS:
            args = list(BASELINES[name])
            args[index] = model_id
            with pytest.raises(ServiceError):
                client.call(name, *args)
