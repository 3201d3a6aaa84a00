"""Serving: flags and their environment equivalents, launch options, ZeroGPU wrapping, and a real
`python app.py` start on a machine without weights."""
import json
import os
import sys
import types
import urllib.error
import urllib.request

import pytest

from ideogram_app.ui import zerogpu
from ideogram_app.ui.app import build_demo
from ideogram_app.ui.login_limit import LoginRateLimit
from ideogram_app.ui.model_slot import ModelSlot
from ideogram_app.ui.serving import ServeOptions, launch_kwargs, parse_options, prepare
from tests.ui.conftest import start_app, stop_app


def test_defaults_without_flags_or_environment():
    assert parse_options([], environ={}) == ServeOptions()


def test_flags(tmp_path):
    options = parse_options(["--model", "/models/i4", "--host", "0.0.0.0", "--port", "7870", "--share",
                             "--auth", "ann:s3:cret", "--auth", "bob:pw", "--admin", "bob", "--models-dir",
                             str(tmp_path), "--no-allow-hub", "--memory", "offload", "--queue-size", "5"], environ={})
    assert options == ServeOptions(model="/models/i4", memory="offload", host="0.0.0.0", port=7870, share=True,
                                   auth=(("ann", "s3:cret"), ("bob", "pw")), admins=("bob",),
                                   models_dirs=(str(tmp_path),), allow_hub=False, queue_size=5)
    assert parse_options(["--mcp"], environ={}).mcp is True
    assert parse_options(["--allow-training"], environ={}).allow_training is True


def test_environment_equivalents_and_flags_win(tmp_path):
    env = {"IDEOGRAM_MODEL": "ideogram-ai/ideogram-4-fp8", "IDEOGRAM_MEMORY": "cpu", "GRADIO_SERVER_NAME": "0.0.0.0",
           "GRADIO_SERVER_PORT": "9000", "IDEOGRAM_SHARE": "1", "IDEOGRAM_AUTH": "u:p\nroot:pw:x\n",
           "IDEOGRAM_ADMINS": "root, u", "IDEOGRAM_MODELS_DIRS": f"{tmp_path}{os.pathsep}{tmp_path}",
           "IDEOGRAM_ALLOW_HUB": "1", "IDEOGRAM_QUEUE_SIZE": "3"}
    options = parse_options([], environ=env)
    assert options == ServeOptions(model="ideogram-ai/ideogram-4-fp8", memory="cpu", host="0.0.0.0", port=9000,
                                   share=True, auth=(("u", "p"), ("root", "pw:x")), admins=("root", "u"),
                                   models_dirs=(str(tmp_path), str(tmp_path)), allow_hub=True, queue_size=3)
    flags = parse_options(["--port", "9100", "--model", "/x", "--auth", "v:q", "--admin", "v", "--no-allow-hub"],
                          environ=env)
    assert (flags.port, flags.auth, flags.admins, flags.allow_hub) == (9100, (("v", "q"),), ("v",), False)
    assert parse_options([], environ={"GRADIO_MCP_SERVER": "true"}).mcp is True
    assert parse_options([], environ={"IDEOGRAM_ALLOW_TRAINING": "1"}).allow_training is True
    assert parse_options([], environ={"IDEOGRAM_ALLOW_TRAINING": "0"}).allow_training is False


@pytest.mark.parametrize("argv, message", [
    (["--auth", "nopassword"], "--auth needs USER:PASSWORD"),
    (["--memory", "turbo"], "--memory"),
    (["--port", "http"], "--port"),
    (["--admin", "ann"], "--admin (IDEOGRAM_ADMINS) needs --auth"),
    (["--auth", "ann:pw", "--admin", "bob"], "--admin 'bob': no --auth user has that name (users: ann)"),
    (["--auth", "ann:pw", "--auth", "ann:other"], "user 'ann' is given twice"),
    (["--models-dir", "/no/such/folder"], "--models-dir (IDEOGRAM_MODELS_DIRS) '/no/such/folder' is not a folder"),
    (["--mcp", "--auth", "ann:pw"], "--mcp cannot be combined with --auth"),
])
def test_bad_flags_exit_with_a_usage_error(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        parse_options(argv, environ={})
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_a_bad_environment_names_its_variable(capsys):
    with pytest.raises(SystemExit):
        parse_options([], environ={"IDEOGRAM_AUTH": "ann"})
    assert "(from IDEOGRAM_AUTH)" in capsys.readouterr().err


def test_launch_kwargs():
    kwargs = launch_kwargs(ServeOptions(host="0.0.0.0", port=7870, share=True, auth=(("u", "p"),), mcp=True))
    assert kwargs["server_name"] == "0.0.0.0" and kwargs["server_port"] == 7870
    assert kwargs["share"] is True and kwargs["auth"] == [("u", "p")] and kwargs["mcp_server"] is True
    assert [m.cls for m in kwargs["app_kwargs"]["middleware"]] == [LoginRateLimit]
    assert "5 failed sign-ins" in kwargs["auth_message"]
    plain = launch_kwargs(ServeOptions())
    assert "server_name" not in plain and "auth" not in plain and "app_kwargs" not in plain


def test_on_gpu_is_a_no_op_without_spaces(monkeypatch):
    monkeypatch.setitem(sys.modules, "spaces", None)  # makes `import spaces` fail like a missing package
    fn = lambda x: x  # noqa: E731
    assert zerogpu.on_gpu(fn, duration=lambda x: 1) is fn


def test_on_gpu_uses_spaces_gpu_with_the_duration_estimate(monkeypatch):
    """Stand-in for the `spaces` package at its public boundary (`spaces.GPU(duration=...)`)."""
    seen = {}

    def gpu(duration):
        seen["duration"] = duration
        return lambda fn: ("wrapped", fn)

    monkeypatch.setitem(sys.modules, "spaces", types.SimpleNamespace(GPU=gpu))
    estimate = lambda x: 42  # noqa: E731
    fn = lambda x: x  # noqa: E731
    assert zerogpu.on_gpu(fn, duration=estimate) == ("wrapped", fn)
    assert seen["duration"] is estimate


def test_app_starts_without_weights_and_serves_compose_and_api(tmp_path):
    from gradio_client import Client
    from gradio_client.exceptions import AppError

    proc, url, log = start_app([], tmp_path)
    try:
        with urllib.request.urlopen(url + "config", timeout=10) as response:
            config = json.loads(response.read())
        elem_ids = {c.get("props", {}).get("elem_id") for c in config["components"]}
        assert {"layout-canvas", "caption-json", "generate-btn", "gallery"} <= elem_ids
        client = Client(url, verbose=False)
        assert client.predict('{"compositional_deconstruction":{"background":"sky","elements":[]}}',
                              api_name="/format_caption").startswith('{"compositional_deconstruction"')
        with pytest.raises(AppError, match="No model is loaded"):
            client.predict('{"compositional_deconstruction":{"background":"sky","elements":[]}}', 256, 256,
                           "turbo", 1, 1, api_name="/generate")
        client.close()
    finally:
        stop_app(proc)


def test_one_gpu_group_a_bounded_queue_and_private_glue():
    demo = prepare(build_demo(ModelSlot()), ModelSlot(), ServeOptions(queue_size=3))
    assert demo._queue.max_size == 3
    gpu = {fn.name for fn in demo.fns.values() if fn.concurrency_id == "gpu"}
    assert gpu == {"on_generate", "on_load_model", "on_unload_model", "generate", "on_expand", "expand",
                   "on_regenerate", "on_vary"}  # region edit and vary generate too
    assert all(fn.concurrency_limit == 1 for fn in demo.fns.values() if fn.concurrency_id == "gpu")
    public = {fn.api_name for fn in demo.fns.values() if fn.api_visibility == "public"}
    assert public == {"generate", "expand", "validate_caption", "format_caption", "render_layout"}


def test_auth_is_required_when_asked_for(tmp_path):
    from gradio_client import Client

    proc, url, log = start_app(["--auth", "ann:secret", "--auth", "bob:pw"], tmp_path)
    try:
        with pytest.raises(urllib.error.HTTPError) as denied:
            urllib.request.urlopen(url + "gradio_api/info", timeout=10)
        assert denied.value.code == 401
        with pytest.raises(ValueError):
            Client(url, verbose=False, auth=("ann", "wrong"))
        client = Client(url, verbose=False, auth=("ann", "secret"))
        issues = client.predict('{"compositional_deconstruction":{"background":"sky","elements":[]}}',
                                api_name="/validate_caption")
        assert [i["code"] for i in issues] == ["missing_description"]
        client.close()
        Client(url, verbose=False, auth=("bob", "pw")).close()
    finally:
        stop_app(proc)


def test_max_side_raises_or_lowers_the_app_limits(capsys):
    from ideogram_app.pipeline.settings import SettingsError
    from ideogram_app.ui.generation import checked_size

    default = parse_options([], environ={})
    with pytest.raises(SettingsError, match="width 3072 is outside the allowed 64-2048 pixels"):
        checked_size(3072, 1024, default.limits)
    raised = parse_options(["--max-side", "4096"], environ={})
    assert (raised.limits.max_side, raised.limits.max_pixels) == (4096, 4096**2)
    assert checked_size(3072, 1024, raised.limits).width == 3072
    assert launch_kwargs(raised)["max_file_size"] == raised.limits.max_upload_bytes
    assert parse_options([], environ={"IDEOGRAM_MAX_SIDE": "1024"}).limits.max_pixels == 1024**2
    with pytest.raises(SystemExit):
        parse_options(["--max-side", "1000"], environ={})
    assert "--max-side (IDEOGRAM_MAX_SIDE) 1000 must be a multiple of 16" in capsys.readouterr().err
