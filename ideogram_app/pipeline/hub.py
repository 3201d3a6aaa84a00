"""Where model files come from: a local folder or file, the Hugging Face Hub, or ModelScope.

Downloads fetch only the files a run needs (allow-patterns) into the client's normal cache, so a
second run reuses them; the clients show their own progress bars. Every failure the user can fix
(gated repo, bad token, wrong name, offline, full disk) becomes one ModelSourceError sentence.
"""
from __future__ import annotations

import errno
import os
import re
from pathlib import Path

import huggingface_hub
from huggingface_hub import errors as hf_errors

SOURCES = ("huggingface", "modelscope")
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_PREFIXES = {"hf://": "huggingface", "huggingface://": "huggingface", "ms://": "modelscope", "modelscope://": "modelscope"}


class ModelSourceError(RuntimeError):
    """A model could not be located or downloaded; the message says how to fix it."""


def split_source(model: str, source: str | None = None) -> tuple[str, str]:
    """'ms://owner/name' -> ('owner/name', 'modelscope'); otherwise `source`, $IDEOGRAM_MODEL_SOURCE or HF."""
    for prefix, name in _PREFIXES.items():
        if model.startswith(prefix):
            return model[len(prefix):], name
    source = source or os.environ.get("IDEOGRAM_MODEL_SOURCE") or "huggingface"
    if source not in SOURCES:
        raise ModelSourceError(f"model source {source!r} is unknown; use one of {', '.join(SOURCES)}")
    return model, source


def resolve_model(
    model: str | os.PathLike,
    allow_patterns: list[str] | None = None,
    *,
    source: str | None = None,
    token: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    local_files_only: bool = False,
) -> Path:
    """A local path for `model`: an existing file/folder as is, else a downloaded repo snapshot."""
    text = os.fspath(model)
    local = Path(text).expanduser()
    if local.exists():
        return local
    repo_id, source = split_source(text, source)
    if not _REPO_ID.match(repo_id):
        raise ModelSourceError(
            f"{text} is neither an existing file or folder nor a repo id like 'ideogram-ai/ideogram-4-fp8'"
        )
    if source == "modelscope":
        return _download_modelscope(repo_id, allow_patterns, cache_dir)
    return _download_huggingface(repo_id, allow_patterns, token, cache_dir, local_files_only)


def _download_huggingface(repo_id, allow_patterns, token, cache_dir, local_files_only) -> Path:
    token = token or os.environ.get("HF_TOKEN") or None
    url = f"https://huggingface.co/{repo_id}"
    try:
        return Path(
            huggingface_hub.snapshot_download(
                repo_id,
                allow_patterns=allow_patterns,
                token=token,
                cache_dir=cache_dir,
                local_files_only=local_files_only,
            )
        )
    except hf_errors.GatedRepoError:
        fix = "then set HF_TOKEN to a read token of that account" if token is None else "with the account that owns HF_TOKEN"
        raise ModelSourceError(f"{repo_id} is gated: accept its licence at {url}, {fix}") from None
    except hf_errors.RepositoryNotFoundError:
        hint = "" if token else ", or set HF_TOKEN if it is private"
        raise ModelSourceError(f"{repo_id} was not found on the Hugging Face Hub: check the name{hint}") from None
    except hf_errors.LocalEntryNotFoundError:
        raise ModelSourceError(
            f"cannot reach the Hugging Face Hub and {repo_id} is not in the local cache: connect to the "
            "internet (and unset HF_HUB_OFFLINE), or pass a local model folder"
        ) from None
    except hf_errors.HfHubHTTPError as err:
        status = err.response.status_code if err.response is not None else None
        if status in (401, 403):
            raise ModelSourceError(
                f"the Hugging Face Hub refused access to {repo_id} (HTTP {status}): set HF_TOKEN to a valid "
                "read token from https://huggingface.co/settings/tokens"
            ) from None
        raise ModelSourceError(f"the Hugging Face Hub failed for {repo_id} (HTTP {status}): try again later") from None
    except OSError as err:
        _raise_if_disk_full(err, repo_id, cache_dir or huggingface_hub.constants.HF_HUB_CACHE, "HF_HOME")
        raise


def _download_modelscope(repo_id, allow_patterns, cache_dir) -> Path:
    try:
        import modelscope
    except ImportError:
        raise ModelSourceError(
            f"downloading {repo_id} from ModelScope needs the modelscope package: pip install modelscope"
        ) from None
    try:
        return Path(modelscope.snapshot_download(repo_id, allow_patterns=allow_patterns, cache_dir=cache_dir))
    except OSError as err:
        _raise_if_disk_full(err, repo_id, cache_dir or "the ModelScope cache", "MODELSCOPE_CACHE")
        raise ModelSourceError(f"ModelScope download of {repo_id} failed: {err}") from None
    except Exception as err:  # modelscope raises plain requests/HTTP errors with no stable types
        raise ModelSourceError(
            f"ModelScope download of {repo_id} failed ({err}); check the name, your network and MODELSCOPE_API_TOKEN"
        ) from None


def _raise_if_disk_full(err: OSError, repo_id: str, where, env_var: str) -> None:
    if err.errno == errno.ENOSPC:
        raise ModelSourceError(
            f"the disk filled up while downloading {repo_id}: free space in {where} or set {env_var} "
            "to a folder on a larger disk"
        ) from None
