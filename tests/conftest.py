"""Suite-wide settings (deterministic, CPU-sized runs on a 2-core machine) and the shared tiny model repos."""
import os
from pathlib import Path

# Spinning OpenMP threads starve each other (and the app/browser processes) on 2 cores: passive waits
# made small torch ops 30-130x faster under load. Must be set before torch starts its thread pool;
# subprocesses inherit it.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import pytest  # noqa: E402
import torch  # noqa: E402
from hypothesis import settings  # noqa: E402

torch.set_num_threads(min(2, os.cpu_count() or 1))

settings.register_profile("ci", deadline=None, max_examples=100, derandomize=True)
settings.register_profile("dev", deadline=None, max_examples=100)
settings.load_profile("ci" if os.environ.get("CI") else "dev")


@pytest.fixture(scope="session")
def tiny_repos(tmp_path_factory) -> dict[str, Path]:
    """One complete tiny Ideogram 4 repo per published checkpoint layout ("fp8", "bf16", "split"; see
    tests/fixtures/tiny_repo.py), written once per session (well under a second) and shared by every test
    directory. Tests only read them; one that needs a variant writes its own copy. The writers are imported
    here, not at the top, because they pull in transformers (~2.5 s) that the caption tests never need."""
    from tests.fixtures.tiny_repo import LAYOUTS, write_tiny_repo

    return {layout: write_tiny_repo(tmp_path_factory.mktemp(f"repo_{layout}"), layout) for layout in LAYOUTS}


@pytest.fixture(scope="session")
def tiny_repo(tiny_repos) -> Path:
    """The official fp8 layout, the one a user of the app downloads: what the app tests load."""
    return tiny_repos["fp8"]


@pytest.fixture(scope="session")
def tiny_repo_no_uncond(tmp_path_factory) -> Path:
    """A bf16 repo without `unconditional_transformer/` (allowed, as in DiffSynth)."""
    from tests.fixtures.tiny_repo import write_tiny_repo

    return write_tiny_repo(tmp_path_factory.mktemp("repo_no_uncond"), "bf16", with_uncond=False)


@pytest.fixture(scope="session")
def text_encoder_repos(tmp_path_factory) -> dict[str, Path]:
    """A tiny text encoder (seed 5) with its tokenizer, as bf16 and as fp8 files, for the model's
    reference tests and the loader's tests alike."""
    from tests.fixtures.tiny_text_encoder import write_tiny_text_encoder, write_tiny_tokenizer

    out = {}
    for layout in ("bf16", "fp8"):
        root = tmp_path_factory.mktemp(f"text_encoder_{layout}")
        write_tiny_text_encoder(root, layout=layout, seed=5)
        write_tiny_tokenizer(root)
        out[layout] = root
    return out


@pytest.fixture(scope="session")
def tiny_vae_folder(tmp_path_factory) -> Path:
    """A tiny FLUX.2 VAE (seed 3) in diffusers' `vae/` layout."""
    from tests.fixtures.tiny_vae import write_tiny_vae

    return write_tiny_vae(tmp_path_factory.mktemp("vae_repo"), seed=3)
