"""Header parsing, path resolution and streaming, checked against the safetensors library itself."""
import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from ideogram_app.loading.safetensors_io import iter_tensors, read_header, read_headers, resolve_safetensors


def sample_tensors():
    torch.manual_seed(0)
    return {
        "a.weight": torch.randn(5, 3, dtype=torch.bfloat16),
        "a.scale": torch.rand(5),
        "b": torch.randn(7, 2).to(torch.float8_e4m3fn),
        "c": torch.arange(6, dtype=torch.int64).reshape(2, 3),
        "d": torch.tensor([True, False]),
        "e": torch.randint(0, 255, (9,), dtype=torch.uint8),
    }


def test_header_matches_safetensors_library(tmp_path):
    path = tmp_path / "x.safetensors"
    save_file(sample_tensors(), path, metadata={"format": "pt"})
    header = read_header(path)
    with safe_open(str(path), framework="pt") as f:
        assert set(header) == set(f.keys())
        for name in f.keys():
            t = f.get_tensor(name)
            assert header[name].dtype == t.dtype and header[name].shape == tuple(t.shape)


def test_streamed_tensors_equal_load_file(tmp_path):
    path = tmp_path / "x.safetensors"
    save_file(sample_tensors(), path)
    reference = load_file(path)
    streamed = dict(iter_tensors(read_header(path)))
    assert streamed.keys() == reference.keys()
    for name, t in reference.items():
        assert streamed[name].dtype == t.dtype
        assert torch.equal(streamed[name].view(torch.uint8), t.view(torch.uint8))


def test_resolve_file_component_repo_and_index(tmp_path):
    comp = tmp_path / "repo" / "transformer"
    comp.mkdir(parents=True)
    save_file({"x": torch.zeros(1)}, comp / "diffusion_pytorch_model.safetensors")
    file = comp / "diffusion_pytorch_model.safetensors"
    assert resolve_safetensors(file) == [file]
    assert resolve_safetensors(comp) == [file]
    assert resolve_safetensors(tmp_path / "repo", subfolder="transformer") == [file]
    with pytest.raises(FileNotFoundError, match="unconditional_transformer"):
        resolve_safetensors(tmp_path / "repo", subfolder="unconditional_transformer")

    sharded = tmp_path / "sharded"
    sharded.mkdir()
    save_file({"x": torch.zeros(1)}, sharded / "m-00001-of-00002.safetensors")
    save_file({"y": torch.ones(2)}, sharded / "m-00002-of-00002.safetensors")
    index = {"weight_map": {"x": "m-00001-of-00002.safetensors", "y": "m-00002-of-00002.safetensors"}}
    (sharded / "m.safetensors.index.json").write_text(json.dumps(index))
    files = resolve_safetensors(sharded)
    assert [f.name for f in files] == ["m-00001-of-00002.safetensors", "m-00002-of-00002.safetensors"]
    assert set(read_headers(files)) == {"x", "y"}


def test_duplicate_key_across_shards_is_an_error(tmp_path):
    save_file({"x": torch.zeros(1)}, tmp_path / "a.safetensors")
    save_file({"x": torch.zeros(1)}, tmp_path / "b.safetensors")
    with pytest.raises(ValueError, match="'x' appears in both"):
        read_headers([tmp_path / "a.safetensors", tmp_path / "b.safetensors"])


def test_not_a_safetensors_file(tmp_path):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x05\x00\x00\x00\x00\x00\x00\x00{oops")
    with pytest.raises(ValueError, match="bad.safetensors: safetensors header is not valid JSON"):
        read_header(bad)
    (tmp_path / "w.bin").write_bytes(b"")
    with pytest.raises(ValueError, match="expected a .safetensors file"):
        resolve_safetensors(tmp_path / "w.bin")

