"""Tiny DiT bases (bf16 file, fp8 file kept as fp8) and the oracle models built from the same files.

The parity helpers import diffusers, which the GPU machine lacks: they are imported inside the
fixtures that need them, so test_gpu.py runs there without it."""
import pytest
import torch

from ideogram_app.loading.dit import load_transformer
from tests.fixtures.tiny_dit import write_tiny_dit

BASES = ("bf16", "fp8")


@pytest.fixture(scope="session")
def base_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("lora_bases")
    return {layout: (root / layout, write_tiny_dit(root / layout, layout, seed=7)) for layout in BASES}


@pytest.fixture
def load_ours(base_files):
    """A fresh fp32-compute DiT from the base file; fp8 weights stay fp8 (`Fp8Linear`)."""
    def load(layout):
        return load_transformer(base_files[layout][0], dtype=torch.float32, fp8="keep")
    return load


@pytest.fixture
def load_oracle(base_files):
    """A fresh diffusers Ideogram4Transformer2DModel with the same (dequantised) weights, fp32."""
    from tests.model.test_dit_parity import oracle_from_file

    def load(layout):
        return oracle_from_file(base_files[layout][1], layout)
    return load


@pytest.fixture(scope="session")
def inputs():
    """Two prompts, left padding (so the segment mask path runs), text and image rows."""
    from tests.model.test_dit_parity import make_inputs

    return make_inputs([6, 3], seed=1)


def run(model, inputs, **kwargs):
    with torch.no_grad():
        out = model(*inputs, **kwargs)
    return out[0] if isinstance(out, tuple) else out
