"""Tiny repos in every layout, written once per session and shared by the pipeline tests."""
import pytest

from tests.fixtures.tiny_repo import LAYOUTS, write_tiny_repo


@pytest.fixture(scope="session")
def tiny_repos(tmp_path_factory):
    return {layout: write_tiny_repo(tmp_path_factory.mktemp(f"repo_{layout}"), layout) for layout in LAYOUTS}


@pytest.fixture(scope="session")
def tiny_repo_no_uncond(tmp_path_factory):
    return write_tiny_repo(tmp_path_factory.mktemp("repo_no_uncond"), "bf16", with_uncond=False)
