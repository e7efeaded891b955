"""The public API is exactly what the README documents: routes, parameters, defaults, results and snippets."""

from __future__ import annotations

import contextlib
import io
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError
from PIL import Image

from backends.core.api_docs import README, readme_with_reference
from backends.core.registry import APIS, api_class
from tests.conftest import free_port, start_process

COMPONENTS = {"image": "Image", "json": "Json"}


def documented_routes(panels=APIS) -> dict:
    return {f"/{spec.name}": spec for panel in panels for spec in api_class(panel).endpoints()}


def readme_snippets() -> list[str]:
    api_section = README.read_text().split("## API\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", api_section, flags=re.DOTALL)


def check_routes(client: Client, routes: dict) -> None:
    """``client``'s view_api lists exactly ``routes``, each with the declared parameters and results."""
    info = client.view_api(return_format="dict", print_info=False)
    assert info["unnamed_endpoints"] == {}
    assert set(info["named_endpoints"]) == set(routes)
    for name, spec in routes.items():
        served = info["named_endpoints"][name]
        assert [p["parameter_name"] for p in served["parameters"]] == [p.name for p in spec.params], name
        for param, declared in zip(served["parameters"], spec.params, strict=True):
            assert param["parameter_has_default"] is not declared.required, (name, declared.name)
            if not declared.required:
                assert param["parameter_default"] == declared.default, (name, declared.name)
        assert [(r["label"], r["component"]) for r in served["returns"]] == [
            (r.name, COMPONENTS[r.kind]) for r in spec.results], name
        assert served["description"].startswith(spec.summary)


def test_readme_reference_is_the_generated_one():
    readme = README.read_text()
    assert readme == readme_with_reference(readme), "run: python -m backends.core.api_docs --write"


def test_every_parameter_and_result_is_described():
    for name, spec in documented_routes().items():
        assert spec.summary, name
        assert all(param.doc for param in spec.params), name
        assert all(result.doc for result in spec.results), name


def test_the_app_lists_only_the_documented_routes(app_url: str):
    check_routes(Client(app_url, verbose=False), documented_routes())


def test_a_served_panel_lists_only_its_routes(tmp_path: Path):
    port = free_port()
    process = start_process(["-m", "backends.serve", "restoration", "--port", str(port)], port,
                            tmp_path / "serve.log")
    try:
        check_routes(Client(f"http://127.0.0.1:{port}/", verbose=False), documented_routes(["restoration"]))
    finally:
        process.kill()
        process.wait()


@pytest.mark.parametrize("index", range(len(readme_snippets())))
def test_readme_snippet_runs_verbatim(app_url: str, index: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    snippet = readme_snippets()[index]
    shutil.copy(README.parent / "assets" / "guidance" / "head_set.json", tmp_path)  # what "Save head set" writes
    monkeypatch.chdir(tmp_path)
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        exec(snippet.replace("http://127.0.0.1:7860/", app_url + "/"), {})  # noqa: S102
    output = printed.getvalue()
    assert output.strip() or "Client(" not in snippet
    if "AppError" in snippet:
        assert "layer 99" in output and "0" in output


def test_keyword_calls_and_omitted_optionals(app_url: str, tmp_path: Path):
    client = Client(app_url, verbose=False)
    scene = tmp_path / "scene.png"
    Image.fromarray((np.random.default_rng(1).random((80, 120, 3)) * 255).astype(np.uint8)).save(scene)
    mask_path, result = client.predict(image=handle_file(str(scene)), box="[10, 10, 60, 50]", api_name="/segment")
    mask = np.asarray(Image.open(mask_path))
    assert mask.shape == (80, 120) and set(np.unique(mask)) <= {0, 255} and isinstance(result, dict)
    restored_path, result = client.predict(image=handle_file(str(scene)), prompt="remove the noise",
                                           api_name="/restore")
    assert Image.open(restored_path).size == (120, 80) and result["degradation"] == "noise"
    understood = client.predict(prompt="please remove the rain", api_name="/understand")
    assert understood["degradation"] == "rain"
    assert client.predict(api_name="/restoration_info")["panel"] == "restoration"
    with pytest.raises(TypeError, match="required argument: image"):  # the one required parameter
        client.predict(prompt="remove the noise", api_name="/restore")


def test_a_bug_is_an_internal_error_not_a_rejected_input(echo_server):
    url, _ = echo_server
    client = Client(url, verbose=False)
    assert client.predict(a=1.0, b=4.0, api_name="/divide") == {"ratio": 0.25}
    with pytest.raises(AppError, match=r"internal error in divide") as caught:
        client.predict(a=1.0, b=0.0, api_name="/divide")
    assert "rejected" not in str(caught.value)
    with pytest.raises(AppError, match="type some text"):
        client.predict(text="", api_name="/echo_text")


def test_front_end_with_every_panel_remote_loads_no_ml_stack(tmp_path: Path):
    """The CPU-basic front end of GPU-served panels: heads served by another process, the rest down."""
    heads_port, app_port = free_port(), free_port()
    heads = start_process(["-m", "backends.serve", "heads", "--port", str(heads_port)], heads_port,
                          tmp_path / "heads.log")
    down = f"http://127.0.0.1:{free_port()}"
    app = start_process(
        ["app.py"], app_port, tmp_path / "app.log", GRADIO_SERVER_PORT=str(app_port),
        HEADLAB_HEADS_BACKEND=f"http://127.0.0.1:{heads_port}", HEADLAB_GUIDANCE_BACKEND=down,
        HEADLAB_SEGMENTATION_BACKEND=down, HEADLAB_RESTORATION_BACKEND=down,
    )
    try:
        client = Client(f"http://127.0.0.1:{app_port}/", verbose=False)
        assert client.predict(model="minilm", text="Attention heads", api_name="/heads_analyze")["n_heads"] == 12
        with pytest.raises(AppError, match="restoration backend .* is unavailable"):
            client.predict(prompt="x", api_name="/understand")
        maps = Path(f"/proc/{app.pid}/maps").read_text()
        assert "libtorch" not in maps and "libtorch" in Path(f"/proc/{heads.pid}/maps").read_text()
    finally:
        for process in (app, heads):
            process.kill()
            process.wait()


def test_front_end_imports_no_ml_module_when_every_panel_is_remote():
    code = (
        "import os, sys\n"
        "for p in ('HEADS', 'GUIDANCE', 'SEGMENTATION', 'RESTORATION'):\n"
        "    os.environ[f'HEADLAB_{p}_BACKEND'] = 'http://127.0.0.1:9'\n"
        "import app\n"
        "app.build_app()\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'transformers', 'diffusers'}))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                          cwd=README.parent, timeout=120)
    assert done.stdout.strip().splitlines()[-1] == "[]"
