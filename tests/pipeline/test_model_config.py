"""ModelConfig resolution and role assignment on real tiny safetensors files."""

import huggingface_hub
import pytest
import torch
from safetensors.torch import save_file

from ideogram_app.pipeline.model_config import (
    ModelConfig,
    classify_weights,
    components_from_configs,
    components_from_model,
)
from tests.fixtures.tiny_dit import write_tiny_dit
from tests.fixtures.tiny_vae import write_tiny_vae


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    """A repo folder with DiTs, VAE, a text-encoder-like file and a tokenizer folder."""
    root = tmp_path_factory.mktemp("repo")
    write_tiny_dit(root, "bf16", subfolder="transformer", seed=1)
    write_tiny_dit(root, "bf16", subfolder="unconditional_transformer", seed=2)
    write_tiny_vae(root)
    (root / "text_encoder").mkdir()
    save_file({"language_model.norm.weight": torch.ones(4)}, root / "text_encoder" / "model.safetensors")
    (root / "text_encoder" / "config.json").write_text("{}")
    (root / "tokenizer").mkdir()
    (root / "tokenizer" / "tokenizer.json").write_text("{}")
    return root


def test_model_config_needs_exactly_one_source():
    with pytest.raises(ValueError, match="exactly one of model_id"):
        ModelConfig()
    with pytest.raises(ValueError, match="exactly one of model_id"):
        ModelConfig(model_id="a/b", path="/x")


def test_allow_patterns_fetch_only_the_component_and_its_configs():
    assert ModelConfig(model_id="a/b", origin_file_pattern="transformer/diffusion_pytorch_model*.safetensors").allow_patterns() == [
        "transformer/diffusion_pytorch_model*.safetensors", "transformer/*.json"]
    assert ModelConfig(model_id="a/b", origin_file_pattern="tokenizer/").allow_patterns() == ["tokenizer/*"]


def test_roles_from_folder_names_with_local_paths(repo):
    configs = [ModelConfig(path=repo / name / file) for name, file in [
        ("vae", "diffusion_pytorch_model.safetensors"),
        ("unconditional_transformer", "diffusion_pytorch_model.safetensors"),
        ("transformer", "diffusion_pytorch_model.safetensors"),
        ("text_encoder", "model.safetensors")]]
    paths = components_from_configs(configs, None)
    assert paths.transformer == repo / "transformer" / "diffusion_pytorch_model.safetensors"
    assert paths.unconditional_transformer.parent.name == "unconditional_transformer"
    assert paths.tokenizer == repo / "tokenizer"  # found beside the text encoder


def test_unnamed_files_are_classified_by_their_keys_and_dits_by_order(repo, tmp_path):
    loose = {}
    for role, name in [("transformer", "b.safetensors"), ("unconditional_transformer", "a.safetensors"),
                       ("vae", "c.safetensors"), ("text_encoder", "d.safetensors")]:
        src = next((repo / role).glob("*.safetensors"))
        loose[role] = tmp_path / name
        loose[role].write_bytes(src.read_bytes())
    assert classify_weights(loose["vae"]) == "vae" and classify_weights(loose["transformer"]) == "dit"
    assert classify_weights(loose["text_encoder"]) == "text_encoder"
    order = ["vae", "unconditional_transformer", "text_encoder", "transformer"]
    paths = components_from_configs([ModelConfig(path=loose[r]) for r in order],
                                    ModelConfig(path=repo / "tokenizer"))
    # DiffSynth's rule: the first DiT given is the conditional one.
    assert paths.transformer == loose["unconditional_transformer"]
    assert paths.unconditional_transformer == loose["transformer"]


def test_unknown_weights_and_duplicates_are_explained(repo, tmp_path):
    other = tmp_path / "other.safetensors"
    save_file({"foo.weight": torch.ones(2)}, other)
    with pytest.raises(ValueError, match="cannot tell which component this is"):
        classify_weights(other)
    cfg = ModelConfig(path=repo / "vae")
    with pytest.raises(ValueError, match="two model configs provide the vae"):
        components_from_configs([cfg, cfg], None)
    with pytest.raises(ValueError, match="no transformer, text_encoder among the model files"):
        components_from_configs([cfg], None)


def test_missing_tokenizer_names_the_fix(repo, tmp_path):
    for role in ("transformer", "text_encoder", "vae"):
        (tmp_path / role).symlink_to(repo / role)
    with pytest.raises(ValueError, match=r"no tokenizer: pass tokenizer_config=ModelConfig\(model_id='ideogram-ai/ideogram-4-fp8'"):
        components_from_model(tmp_path)


def test_hub_ids_download_with_allow_patterns(repo, monkeypatch):
    calls = []

    def snapshot_download(repo_id, **kwargs):
        calls.append((repo_id, kwargs["allow_patterns"]))
        return str(repo)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    configs = [ModelConfig(model_id="ideogram-ai/ideogram-4-fp8", origin_file_pattern=f"{r}/*.safetensors")
               for r in ("transformer", "text_encoder", "vae")]
    paths = components_from_configs(configs, ModelConfig(model_id="ideogram-ai/ideogram-4-fp8", origin_file_pattern="tokenizer/"))
    assert paths.transformer == repo / "transformer" / "diffusion_pytorch_model.safetensors"
    assert paths.tokenizer == repo / "tokenizer" and paths.unconditional_transformer is None
    assert calls[0] == ("ideogram-ai/ideogram-4-fp8", ["transformer/*.safetensors", "transformer/*.json"])
    assert calls[-1] == ("ideogram-ai/ideogram-4-fp8", ["tokenizer/*"])
    calls.clear()
    short = components_from_model("ideogram-ai/ideogram-4-fp8")
    assert short.unconditional_transformer == repo / "unconditional_transformer"
    assert calls == [("ideogram-ai/ideogram-4-fp8",
                      ["transformer/*", "unconditional_transformer/*", "text_encoder/*", "vae/*", "tokenizer/*", "model_index.json"])]
