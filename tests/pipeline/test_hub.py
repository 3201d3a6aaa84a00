"""Model sources: real local paths, the real HF client offline, fakes at the client's public function."""
import errno
import sys
import types

import httpx2
import huggingface_hub
import pytest
from huggingface_hub import errors as hf_errors

from ideogram_app.pipeline.hub import ModelSourceError, resolve_model

REPO = "ideogram-ai/ideogram-4-fp8"


def http_error(cls, status):
    request = httpx2.Request("GET", f"https://huggingface.co/api/models/{REPO}")
    return cls(f"HTTP {status}", response=httpx2.Response(status, request=request))


@pytest.fixture
def fake_hf(monkeypatch, tmp_path):
    """Replace huggingface_hub.snapshot_download; it records its arguments and 'downloads' files."""
    calls = []

    def snapshot_download(repo_id, **kwargs):
        calls.append((repo_id, kwargs))
        if isinstance(fake_hf_error[0], BaseException):
            raise fake_hf_error[0]
        folder = tmp_path / "snapshot"
        (folder / "transformer").mkdir(parents=True, exist_ok=True)
        (folder / "transformer" / "config.json").write_text("{}")
        return str(folder)

    fake_hf_error = [None]
    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    return types.SimpleNamespace(calls=calls, fail_with=lambda e: fake_hf_error.__setitem__(0, e))


def test_local_folders_and_files_are_used_as_they_are(tmp_path):
    (tmp_path / "vae").mkdir()
    weights = tmp_path / "vae" / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(b"x")
    assert resolve_model(tmp_path) == tmp_path
    assert resolve_model(str(weights)) == weights


def test_missing_local_path_is_not_mistaken_for_a_repo(tmp_path):
    with pytest.raises(ModelSourceError, match="is neither an existing file or folder nor a repo id"):
        resolve_model(tmp_path / "nope" / "model")


def test_hub_download_passes_allow_patterns_and_hf_token(fake_hf, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_secret")
    path = resolve_model(REPO, ["transformer/*", "tokenizer/*"])
    assert (path / "transformer" / "config.json").is_file()
    repo_id, kwargs = fake_hf.calls[0]
    assert repo_id == REPO
    assert kwargs["allow_patterns"] == ["transformer/*", "tokenizer/*"] and kwargs["token"] == "hf_secret"


def test_hf_prefix_and_default_source(fake_hf, monkeypatch):
    monkeypatch.delenv("IDEOGRAM_MODEL_SOURCE", raising=False)
    resolve_model("hf://" + REPO)
    assert fake_hf.calls[0][0] == REPO and fake_hf.calls[0][1]["token"] is None


@pytest.mark.parametrize(
    "error,message",
    [
        (lambda: http_error(hf_errors.GatedRepoError, 403),
         f"{REPO} is gated: accept its licence at https://huggingface.co/{REPO}, then set HF_TOKEN"),
        (lambda: http_error(hf_errors.RepositoryNotFoundError, 404),
         f"{REPO} was not found on the Hugging Face Hub: check the name, or set HF_TOKEN if it is private"),
        (lambda: http_error(hf_errors.HfHubHTTPError, 401),
         r"refused access to .* \(HTTP 401\): set HF_TOKEN to a valid read token"),
        (lambda: http_error(hf_errors.HfHubHTTPError, 503), r"failed for .* \(HTTP 503\): try again later"),
        (lambda: hf_errors.LocalEntryNotFoundError("offline"),
         f"cannot reach the Hugging Face Hub and {REPO} is not in the local cache"),
        (lambda: OSError(errno.ENOSPC, "No space left on device"),
         f"the disk filled up while downloading {REPO}: free space in .* or set HF_HOME"),
    ],
)
def test_hub_failures_become_one_sentence_fixes(fake_hf, error, message):
    fake_hf.fail_with(error())
    with pytest.raises(ModelSourceError, match=message) as info:
        resolve_model(REPO)
    assert "\n" not in str(info.value)


def test_gated_with_a_token_says_which_account(fake_hf, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_x")
    fake_hf.fail_with(http_error(hf_errors.GatedRepoError, 403))
    with pytest.raises(ModelSourceError, match="with the account that owns HF_TOKEN"):
        resolve_model(REPO)


def test_real_client_offline_with_an_empty_cache(tmp_path):
    with pytest.raises(ModelSourceError, match="not in the local cache"):
        resolve_model(REPO, ["vae/*"], cache_dir=tmp_path, local_files_only=True)


def test_modelscope_missing_package_is_explained(monkeypatch):
    monkeypatch.setitem(sys.modules, "modelscope", None)  # makes `import modelscope` fail
    with pytest.raises(ModelSourceError, match="needs the modelscope package: pip install modelscope"):
        resolve_model("ms://" + REPO)


def test_modelscope_download_through_its_public_function(monkeypatch, tmp_path):
    calls = []

    def snapshot_download(model_id, allow_patterns=None, cache_dir=None):
        calls.append((model_id, allow_patterns))
        if model_id.endswith("full"):
            raise OSError(errno.ENOSPC, "No space left on device")
        if model_id.endswith("missing"):
            raise RuntimeError("404 Client Error")
        return str(tmp_path)

    monkeypatch.setitem(sys.modules, "modelscope", types.SimpleNamespace(snapshot_download=snapshot_download))
    monkeypatch.setenv("IDEOGRAM_MODEL_SOURCE", "modelscope")
    assert resolve_model(REPO, ["vae/*"]) == tmp_path
    assert calls == [(REPO, ["vae/*"])]
    with pytest.raises(ModelSourceError, match="disk filled up while downloading a/full: .*MODELSCOPE_CACHE"):
        resolve_model("a/full")
    with pytest.raises(ModelSourceError, match=r"ModelScope download of a/missing failed \(404 Client Error\)"):
        resolve_model("a/missing")


def test_unknown_source_is_rejected(monkeypatch):
    monkeypatch.setenv("IDEOGRAM_MODEL_SOURCE", "civitai")
    with pytest.raises(ModelSourceError, match="model source 'civitai' is unknown"):
        resolve_model(REPO)
