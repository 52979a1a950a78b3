"""The pack inside a real ComfyUI server: it imports, registers every node, and graphs run over HTTP."""

from __future__ import annotations

import comfy_harness
import pytest
from server_graphs import combo_options, fill_inputs, output_index

pytestmark = pytest.mark.server

XNEMO_NODES = (
    "XNeMoLoader",
    "XNeMoEncodeMotion",
    "XNeMoReferenceCondition",
    "XNeMoSampleAnimation",
    "XNeMoInterpolateMotion",
    "XNeMoPasteBack",
    "XNeMoVAELoader",
    "XNeMoVAEDecode",
)
LOADER_FILE_INPUTS = ("denoising_unet", "reference_unet", "motion_encoder", "temporal_module")
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def object_info(comfy_client) -> dict:
    return comfy_client.object_info()


def _require_nodes(object_info: dict, *node_ids: str) -> None:
    missing = [n for n in node_ids if n not in object_info]
    if missing:
        pytest.fail(f"nodes not registered by the pack: {missing}", pytrace=False)


def test_pack_imports_without_errors(comfy_server):
    assert comfy_server.import_failures() == [], comfy_server.log_tail()
    loaded = [line for line in comfy_server.log_text().splitlines() if line.rstrip().endswith("/custom_nodes/xnemo")]
    assert loaded, f"the pack does not appear in ComfyUI's custom-node import list:\n{comfy_server.log_tail()}"


@pytest.mark.parametrize("node_id", XNEMO_NODES)
def test_object_info_lists_node(object_info, node_id):
    ours = sorted(k for k, v in object_info.items() if v.get("python_module") == comfy_harness.PACK_PYTHON_MODULE)
    if node_id not in object_info:
        pytest.fail(f"{node_id} missing from /object_info; the pack registered {ours}", pytrace=False)
    info = object_info[node_id]
    assert info["python_module"] == comfy_harness.PACK_PYTHON_MODULE
    assert info["category"].split("/")[0] == "X-NeMo"


def test_core_graph_round_trip(comfy_client, media_dir):
    """Upload, run, history and /view through core nodes only: proves the harness itself."""
    name = comfy_client.upload_image(media_dir / "ref_image.png")
    entry = comfy_client.run(
        {
            "1": {"class_type": "LoadImage", "inputs": {"image": name}},
            "2": {"class_type": "PreviewImage", "inputs": {"images": ["1", 0]}},
        },
        timeout=120,
    )
    files = comfy_client.output_files(entry)
    assert len(files) == 1 and files[0]["type"] == "temp"
    png = comfy_client.view(files[0]["filename"], files[0]["subfolder"], files[0]["type"])
    assert png.startswith(PNG_SIGNATURE)


def test_execution_error_is_surfaced(comfy_client, tmp_path):
    bogus = tmp_path / "not_an_image.png"
    bogus.write_bytes(b"this is not a png")
    name = comfy_client.upload_image(bogus)
    with pytest.raises(comfy_harness.ExecutionFailed) as failure:
        comfy_client.run(
            {
                "1": {"class_type": "LoadImage", "inputs": {"image": name}},
                "2": {"class_type": "PreviewImage", "inputs": {"images": ["1", 0]}},
            },
            timeout=120,
        )
    assert failure.value.node_type == "LoadImage"
    assert "LoadImage" in str(failure.value)


def test_invalid_prompt_is_rejected(comfy_client):
    with pytest.raises(comfy_harness.PromptRejected) as rejected:
        comfy_client.queue_prompt({"1": {"class_type": "NoSuchNodeXNeMo", "inputs": {}}})
    assert "NoSuchNodeXNeMo" in str(rejected.value)


def test_interrupt_and_free_are_accepted(comfy_client):
    comfy_client.interrupt()
    comfy_client.free(unload_models=True, free_memory=True)
    assert comfy_client.get_json("/queue") == {"queue_running": [], "queue_pending": []}


def test_loader_lists_fixture_checkpoints(comfy_client, object_info, xnemo_fixture_models):
    _require_nodes(object_info, "XNeMoLoader")
    required = comfy_client.object_info("XNeMoLoader")["input"]["required"]
    for role in LOADER_FILE_INPUTS:
        assert role in required, f"XNeMoLoader has no input {role!r}: {sorted(required)}"
        options = combo_options(required[role]) or []
        assert xnemo_fixture_models[role] in options, f"{role}: {options}"
    assert "weight_dtype" in required


def test_graph_through_pack_nodes_executes(comfy_client, object_info, xnemo_fixture_models, media_dir):
    """Tiny fixture checkpoints -> XNeMoLoader -> XNeMoEncodeMotion on the reference portrait -> PreviewImage."""
    _require_nodes(object_info, "XNeMoLoader", "XNeMoEncodeMotion")
    loader = comfy_client.object_info("XNeMoLoader")
    encode = comfy_client.object_info("XNeMoEncodeMotion")
    image_out = output_index(encode, "IMAGE")
    xnemo_out = output_index(loader, "XNEMO")
    assert xnemo_out is not None, f"XNeMoLoader outputs {loader['output']}, expected an XNEMO output"
    assert image_out is not None, f"XNeMoEncodeMotion outputs {encode['output']}, expected a face-track IMAGE"

    name = comfy_client.upload_image(media_dir / "ref_image.png")
    overrides = {role: xnemo_fixture_models[role] for role in LOADER_FILE_INPUTS}
    if "fp32" in (combo_options(loader["input"]["required"].get("weight_dtype", [])) or []):
        overrides["weight_dtype"] = "fp32"
    prompt = {
        "1": {"class_type": "XNeMoLoader", "inputs": fill_inputs(loader, {}, overrides)},
        "2": {"class_type": "LoadImage", "inputs": {"image": name}},
        "3": {
            "class_type": "XNeMoEncodeMotion",
            "inputs": fill_inputs(encode, {"XNEMO": ["1", xnemo_out], "IMAGE": ["2", 0]}),
        },
        "4": {"class_type": "PreviewImage", "inputs": {"images": ["3", image_out]}},
    }
    entry = comfy_client.run(prompt, timeout=300)
    files = comfy_client.output_files(entry)
    assert files, f"no preview written: {entry.get('outputs')}"
    assert comfy_client.view(files[0]["filename"], files[0]["subfolder"], files[0]["type"]).startswith(PNG_SIGNATURE)


def test_window_route_answers_from_the_sampler_planner(comfy_client):
    """The frontend readout's counts come from /xnemo/windows (pure/windows), so they match the sampler."""
    from xnemo_pack.xnemo_core.pure.windows import window_summary

    got = comfy_client.get_json(
        "/xnemo/windows?frames=50&length=24&overlap=4&steps=20&closed_loop=false&seed=3&offset_mode=seeded"
    )
    assert got == window_summary(50, 24, 4, False, 20, 3, "seeded")
    assert got["min_per_step"] == 3 and got["max_per_step"] == 4
    with pytest.raises(comfy_harness.HarnessError, match="HTTP 400.*overlap must be below length"):
        comfy_client.get_json("/xnemo/windows?frames=50&length=24&overlap=30&steps=20&seed=3")
