"""The public API of a really launched `python app.py --model <tiny repo>`, through gradio_client:
the endpoints (`/expand`'s own tests are in test_expand_server.py), their bad inputs (clear errors, and the app keeps serving), and that the UI
glue events are not part of the API."""
import hashlib
import json
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from gradio_client.exceptions import AppError
from PIL import Image

from ideogram_app.caption.templates import template_text
from ideogram_app.pipeline.metadata import read_image_metadata
from tests.lora.loras import fused_truth, write_comfyui
from tests.ui.gradio_protocol import call_api

PUBLIC = {"/generate", "/expand", "/validate_caption", "/format_caption", "/render_layout"}


def test_only_the_five_endpoints_are_public(client):
    api = client.view_api(print_info=False, return_format="dict")
    assert set(api["named_endpoints"]) == PUBLIC
    assert api["unnamed_endpoints"] == {}
    generate = api["named_endpoints"]["/generate"]
    assert [p["parameter_name"] for p in generate["parameters"]] == [
        "caption", "width", "height", "preset", "seed", "num_images", "loras", "input_image", "denoising_strength",
        "edit_region", "mode"]


def test_format_caption_returns_the_compact_canonical_form(client):
    canonical = template_text("poster_headline").strip()
    pretty = json.dumps(json.loads(canonical), indent=4, ensure_ascii=True)  # spaced and \u-escaped
    assert client.predict(pretty, api_name="/format_caption") == canonical


def test_validate_caption_lists_issues_with_paths(client):
    caption = json.loads(template_text("logo"))
    caption["compositional_deconstruction"]["elements"][0]["bbox"] = [10, 20, 5, 40]
    issues = client.predict(json.dumps(caption), api_name="/validate_caption")
    assert {"code": "bbox_order", "json_path": "compositional_deconstruction.elements[0].bbox"} in [
        {"code": i["code"], "json_path": i["json_path"]} for i in issues]
    assert all(i["severity"] in ("error", "warning") and i["message"] for i in issues)
    assert client.predict(template_text("logo"), api_name="/validate_caption") == []


def test_render_layout_returns_a_png_of_the_size(client, app_server):
    reply = call_api(app_server.url, "render_layout", json.dumps({"data": [template_text("logo"), 64, 64]}))
    served = Path(reply.data[0]["path"])  # a temporary copy in Gradio's cache (delete_cache), not an output
    assert served.is_file() and app_server.output_dir not in served.parents
    assert not list(app_server.output_dir.rglob("layout*.png"))
    path = client.predict(template_text("poster_headline"), 320, 448, api_name="/render_layout")
    image = Image.open(path)
    assert image.format == "PNG" and image.size == (320, 448)
    # the headline box [50, 80, 230, 920] is drawn in the text colour along its left edge
    x = round(80 * 320 / 1000) + 1
    assert image.getpixel((x, 150 * 448 // 1000))[0] > 180


def test_generate_with_the_tiny_model(client):
    files, settings = client.predict(template_text("logo"), 64, 64, "turbo", 11, 2, api_name="/generate")
    assert len(files) == 2
    records = [read_image_metadata(f) for f in files]
    assert [r["settings"]["seed"] for r in records] == [11, 12]
    assert all(Image.open(f).size == (64, 64) for f in files)
    assert records[0]["prompt"] == template_text("logo").strip() == settings["prompt"]
    assert [s["seed"] for s in settings["images"]] == [11, 12]
    assert {s["mode"] for s in settings["images"]} == {"eager"}  # the test server's model runs eager


def test_generate_refuses_a_mode_the_server_does_not_run(client):
    files, _ = client.predict(template_text("logo"), 64, 64, "turbo", 4, 1, None, None, None, None, "eager",
                              api_name="/generate")
    assert read_image_metadata(files[0])["settings"]["mode"] == "eager"
    with pytest.raises(AppError, match="mode 'fast': this server's model runs in 'eager' mode"):
        client.predict(template_text("logo"), 64, 64, "turbo", 4, 1, None, None, None, None, "fast", api_name="/generate")
    with pytest.raises(AppError, match="speed mode 'warp' is unknown; choose one of eager, exact, fast"):
        client.predict(template_text("logo"), 64, 64, "turbo", 4, 1, None, None, None, None, "warp", api_name="/generate")


def test_generate_with_a_lora_from_the_folder(client, app_server):
    """A LoRA file in the server's folder (next to its output folder): recorded in each PNG's metadata
    (file, sha256 of the file, scale) and changing the image of the same seed; names outside the folder
    are refused with the list of what is there."""
    folder = app_server.output_dir.parent / "loras"
    folder.mkdir(exist_ok=True)
    lora = write_comfyui(folder / "api-ink.safetensors", fused_truth(seed=11))
    caption = template_text("poster_headline")
    [plain], _ = client.predict(caption, 80, 64, "turbo", 3, 1, api_name="/generate")
    [styled], info = client.predict(caption, 80, 64, "turbo", 3, 1, ["api-ink.safetensors:0.8"], api_name="/generate")
    expected = [{"name": "api-ink", "file": "api-ink.safetensors", "sha256": hashlib.sha256(lora.read_bytes()).hexdigest(),
                 "scale": 0.8, "target": "transformer", "merged": False}]
    assert read_image_metadata(styled)["settings"]["loras"] == expected == info["images"][0]["loras"]
    assert "loras" not in read_image_metadata(plain)["settings"]
    assert read_image_metadata(styled)["settings"]["seed"] == read_image_metadata(plain)["settings"]["seed"] == 3
    difference = np.abs(np.asarray(Image.open(styled), dtype=int) - np.asarray(Image.open(plain), dtype=int))
    assert difference.mean() > 1.0
    # the next call without the LoRA is the plain image again: each request gets exactly its own LoRAs
    [again], _ = client.predict(caption, 80, 64, "turbo", 3, 1, api_name="/generate")
    assert np.array_equal(np.asarray(Image.open(again)), np.asarray(Image.open(plain)))
    for loras, message in [(["../api-ink.safetensors"], r"'../api-ink.safetensors' is not in the server's LoRA "
                                                         r"folder \(available: .*api-ink.safetensors"),
                           (["api-ink.safetensors:5"], "scale 5 is outside -2 to 2"),
                           (["api-ink.safetensors:x"], "the scale after ':' must be a number")]:
        with pytest.raises(AppError, match=message):
            client.predict(caption, 80, 64, "turbo", 3, 1, loras, api_name="/generate")


@pytest.mark.parametrize("args, message", [
    (('{"compositional_deconstruction": {"background": "x",, }}',), "line 1, column"),
    (("",), "caption is empty"),
    (('{"compositional_deconstruction": {"elements": []}}',), "background"),
])
def test_format_caption_bad_inputs(client, args, message):
    with pytest.raises(AppError, match=message):
        client.predict(*args, api_name="/format_caption")


@pytest.mark.parametrize("width, height, message", [
    (1000, 64, "nearest valid widths are 992 and 1008"),
    (64, 8, "height 8 is outside the allowed 64-2048 pixels"),
    (100000, 100000, "width 100000 is outside the allowed 64-2048 pixels; height 100000 is outside"),
])
def test_bad_sizes_are_explained(client, width, height, message):
    with pytest.raises(AppError, match=message):
        client.predict(template_text("logo"), width, height, api_name="/render_layout")
    with pytest.raises(AppError, match=message):
        client.predict(template_text("logo"), width, height, "turbo", 1, 1, api_name="/generate")


def test_generate_bad_inputs_then_the_app_still_serves(client):
    caption = json.loads(template_text("logo"))
    caption["compositional_deconstruction"]["elements"][0]["desc"] = "very long words " * 1500
    with pytest.raises(AppError, match=r"prompt is \d+ tokens long .*at most 2048"):
        client.predict(json.dumps(caption), 64, 64, "turbo", 1, 1, api_name="/generate")
    with pytest.raises(AppError, match="line 1, column"):
        client.predict('{"compositional_deconstruction": ', 64, 64, "turbo", 1, 1, api_name="/generate")
    with pytest.raises(AppError, match="preset 'fast' is unknown"):
        client.predict(template_text("logo"), 64, 64, "fast", 1, 1, api_name="/generate")
    with pytest.raises(AppError, match="num_images is 9; choose 1 to 8"):
        client.predict(template_text("logo"), 64, 64, "turbo", 1, 9, api_name="/generate")
    with pytest.raises(AppError, match="seed -5 is outside 0..4294967295; use -1 for a random seed"):
        client.predict(template_text("logo"), 64, 64, "turbo", -5, 1, api_name="/generate")
    assert client.predict(template_text("logo"), api_name="/format_caption") == template_text("logo").strip()


def test_mcp_tools_are_the_public_endpoints(app_url):
    with urllib.request.urlopen(app_url + "gradio_api/mcp/schema", timeout=10) as response:
        tools = json.loads(response.read())
    names = {tool["name"] for tool in tools}
    assert {"generate", "expand", "validate_caption", "format_caption", "render_layout"} <= names
    assert not any(name.startswith("on_") for name in names)  # UI glue is not a tool
    generate = next(tool for tool in tools if tool["name"] == "generate")
    assert "bbox = [y_min, x_min, y_max, x_max]" in json.dumps(generate)
