"""Bad-input sweep: every API endpoint of every panel, fed odd values one parameter at a time.

Each odd value has a name, and for each parameter the test knows which odd values are *accepted* — a documented
conversion (an RGBA or 16-bit image becomes RGB, a huge image is downscaled, a long text is cut to the model's
limit, an empty box means "no box") — and which must be *refused* with a :class:`ServiceError` whose message says
what is wrong (never an :class:`InternalError`, another exception, a hang or a crash). Every value is checked on
its own, and the service must keep answering afterwards.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from PIL import Image

from backends.core.client import LocalClient
from backends.core.registry import APIS, api_class
from backends.core.service import InternalError, ServiceError
from backends.heads.service import HeadsService

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
    "heads_head_effects": ("", ""),
    "heads_needles": ("",),
    "guidance_layout": ("",),
    "guidance_sample": ("", "Sneaker", 1, 0, 2, 1.0, 1.0, "1.0", 1.0),
    "guidance_search": ("", "Sneaker", 1, 1, 1, 1.0, 3.0, 1.0, 2, "confidence"),
    "guidance_head_effects": ("", "confidence"),
    "guidance_effect_grid": ("", "Sneaker", 0, 2),
    "segment": (SCENE, "the bag", "", "", ""),
    "segment_attention": (SCENE, "the bag", "", "", -1, -1, 1),
    "segment_view": (SCENE, "the bag", "", "", "", 0.5, -1),
    "segmentation_head_effects": ("", "colour"),
    "restore": (SCENE, "remove the noise", "", None, "", None),
    "restore_compare": (SCENE, "remove the noise", "", None, "", None),
    "restoration_region": (SCENE, "[10, 10, 60, 50]", None),
    "compare_cbm3d": (SMALL, None, "", None, ""),
    "understand": (SCENE, "remove the noise", ""),
    "restoration_head_effects": ("", "noise"),
}
NO_INPUT = {"cancel", "progress"}
#: minutes on a CPU (computed once per model): their only parameter is checked before any work, so the sweep
#: feeds them the odd values without a valid call first
SLOW = {"heads_needles", "guidance_head_effects"}


def odd_images() -> dict[str, Image.Image | None]:
    """Images of every awkward kind: missing, empty, tiny, transparent, 16-bit, float, palette, 1-bit, huge."""
    rgb = np.asarray(SCENE)
    return {
        "missing": None,
        "empty": Image.new("RGB", (0, 0)),
        "1×1": Image.new("RGB", (1, 1)),
        "RGBA": Image.fromarray(np.dstack([rgb, np.full(rgb.shape[:2], 128, np.uint8)])),
        "16-bit": Image.fromarray(rgb[..., 0].astype(np.uint16) * 257),
        "float": Image.fromarray(rgb[..., 1].astype(np.float32) / 255.0),
        "palette": SCENE.convert("P"),
        "1-bit": SCENE.convert("1"),
        "LA": SCENE.convert("LA"),
        "CMYK": SCENE.convert("CMYK"),
        "huge": Image.new("RGB", (6000, 4000), (120, 130, 140)),
    }


ODD_VALUES = {
    "model": {"path": "../../etc/passwd", "absolute path": "/etc/passwd", "url": "https://evil.example/model.bin",
              "500 chars": "a" * 500, "shell": "gpt2; rm -rf /", "unknown": "no-such-model"},
    "str": {"empty": "", "blank": "   ", "200k chars": "x" * 200_000, "broken utf-8": "\udcff\udcfe broken utf-8",
            "control": "\x00\x01\x02", "bad json": "{not json", "huge numbers": "[[1e308, -5, 7]]"},
    "int": {"-5": -5, "0": 0, "10**9": 10**9},
    "float": {"nan": math.nan, "inf": math.inf, "-1e9": -1e9, "1e9": 1e9},
}
CONVERTED_IMAGES = {"RGBA", "16-bit", "float", "palette", "1-bit", "LA", "CMYK", "huge"}
#: free text: cut to the model's limit when long; JSON-looking text is just text
FREE_TEXT = {"200k chars", "bad json", "huge numbers"}
#: optional JSON prompts (clicks, a box): empty means none
OPTIONAL_JSON = {"empty", "blank"}

#: the most tokens the sweep's Heads service analyses
SWEEP_TOKENS = 1024
#: endpoints with a ``heads_off`` head list
HEADS_OFF = [spec.name for panel in APIS for spec in api_class(panel).endpoints()
             if any(param.name == "heads_off" for param in spec.params)]
#: every panel's head atlas
APIS_HEAD_EFFECTS = [f"{panel}_head_effects" for panel in APIS]
#: the odd values each parameter accepts; a parameter not listed accepts none of them, except that images accept
#: CONVERTED_IMAGES and integers (indices, flags) accept 0
ACCEPTED = {
    **{(name, "text"): FREE_TEXT for name in ("heads_analyze", "heads_model_view", "heads_map", "heads_export",
                                               "heads_scores", "heads_ablate", "heads_generate")},
    ("heads_bertviz", "text"): {"bad json", "huge numbers"},  # bertviz refuses long texts
    **{(name, count): set() for name, count in (("heads_generate", "n_tokens"), ("guidance_sample", "n"),
                                                 ("guidance_sample", "steps"), ("guidance_search", "seeds"),
                                                 ("guidance_search", "rounds"), ("guidance_search", "top_k"),
                                                 ("guidance_search", "steps"), ("guidance_effect_grid", "steps"))},
    **{(name, "seed"): {"-5", "0", "10**9"} for name in ("guidance_sample", "guidance_effect_grid")},  # any integer
    **{(name, "tasks"): {"empty", "blank"} for name in APIS_HEAD_EFFECTS},  # every task of the model
    # an empty head list is no head (nothing ablated or perturbed)
    **{(name, field): {"empty", "blank"} for name, field in (("heads_ablate", "heads"), ("guidance_sample", "heads"))},
    **{(name, "heads_off"): {"empty", "blank"} for name in HEADS_OFF},
    # the baselines give no clicks or box, so an empty expression leaves nothing to segment
    **{(name, "expression"): {"200k chars", "bad json", "huge numbers"} for name in ("segment", "segment_view")},
    ("segment_attention", "expression"): {"200k chars", "bad json", "huge numbers"},
    **{(name, field): OPTIONAL_JSON for name in ("segment", "segment_view", "segment_attention")
       for field in ("points", "box")},
    **{(name, "prompt"): {"bad json", "huge numbers"} for name in ("restore", "restore_compare")},
    ("understand", "prompt"): {"empty", "blank", "bad json", "huge numbers"},  # empty: a suggestion
    ("understand", "image"): {"missing", *CONVERTED_IMAGES},
    # a reference or a region mask must have the image's size; a float mask has no white to select
    **{(name, "reference"): {"missing", *CONVERTED_IMAGES - {"huge"}} for name in ("restore", "restore_compare")},
    **{(name, "region_mask"): {"missing", *CONVERTED_IMAGES - {"huge", "float"}}
       for name in ("restore", "restore_compare")},
    **{(name, "region"): {"empty", "blank"} for name in ("restore", "restore_compare", "compare_cbm3d")},
    ("restoration_region", "region_mask"): {"missing"},  # the baseline gives a box already: one region at a time
    ("compare_cbm3d", "image"): CONVERTED_IMAGES - {"huge"},  # CBM3D takes at most 1024² px
    ("compare_cbm3d", "reference"): {"missing"},  # the baseline image is smaller than the odd ones
    ("compare_cbm3d", "region_mask"): {"missing"},
    ("compare_cbm3d", "job"): {"empty"},
}


def accepted(endpoint: str, name: str, kind: str) -> set[str]:
    """The odd values of parameter ``name`` of ``endpoint`` that must be accepted."""
    if (endpoint, name) in ACCEPTED:
        return ACCEPTED[(endpoint, name)]
    return {"image": CONVERTED_IMAGES, "int": {"0"}}.get(kind, set())


def odd_values(kind: str, name: str) -> dict:
    """The odd values tried for one parameter, by name."""
    if kind == "image":
        return odd_images()
    return ODD_VALUES["model" if name == "model" else kind]


def sweep_cases() -> list[tuple[str, str]]:
    return [(panel, spec.name) for panel in APIS for spec in api_class(panel).endpoints()[1:]
            if spec.params and not any(spec.name.endswith(word) for word in NO_INPUT)]


@pytest.fixture(scope="module")
def clients() -> dict[str, LocalClient]:
    """A client per panel; the Heads service analyses at most SWEEP_TOKENS tokens, so the long text is cut the same
    way as at 8,192 tokens in a fraction of the time."""
    return {**{panel: LocalClient(panel) for panel in APIS},
            "heads": LocalClient("heads", HeadsService(token_limit=SWEEP_TOKENS))}


def test_every_endpoint_has_a_baseline():
    assert {name for _, name in sweep_cases()} == set(BASELINES)


def test_every_exception_names_a_real_parameter():
    params = {(spec.name, p.name) for panel in APIS for spec in api_class(panel).endpoints() for p in spec.params}
    assert set(ACCEPTED) <= params


@pytest.mark.parametrize(("panel", "name"), sweep_cases())
def test_endpoint_refuses_or_converts_each_odd_value(clients: dict[str, LocalClient], panel: str, name: str):
    client = clients[panel]
    spec = next(ep for ep in api_class(panel).endpoints() if ep.name == name)
    baseline = [*BASELINES[name], *(p.default for p in spec.params[len(BASELINES[name]):])]
    if name not in SLOW:
        client.call(name, *baseline)  # valid call works
    wrong = []
    for index, param in enumerate(spec.params):
        expected = accepted(name, param.name, param.kind)
        for label, value in odd_values(param.kind, param.name).items():
            args = list(baseline)
            args[index] = value
            try:
                client.call(name, *args)
                outcome = "accepted"
            except InternalError as error:
                outcome = f"internal error: {error}"
            except ServiceError as error:
                outcome = "refused" if str(error).strip() else "refused with an empty message"
            if outcome != ("accepted" if label in expected else "refused"):
                wrong.append(f"{param.name}={label}: {outcome}")
    assert not wrong, f"{name}: " + "; ".join(wrong)
    if name not in SLOW:
        client.call(name, *baseline)  # still answering
    assert client.info()["status"] == "ok"
