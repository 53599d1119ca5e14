"""Local-only resolution of model weights named by a path or a hub id.

``NAME@SOURCE`` may name a local directory or a Hugging Face hub id
(``owner/name``). A hub id is only looked up in the local HF cache: nothing
here touches the network unless the user opted in with
``RELSEARCH_ALLOW_DOWNLOAD=1``. When weights are absent the error says which
files were looked for, where, and the command that fetches them on a
connected machine.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

from relsearch.errors import MissingWeightsError

log = logging.getLogger(__name__)

ALLOW_DOWNLOAD_ENV = "RELSEARCH_ALLOW_DOWNLOAD"

# owner/name as the hub spells it; a local path that happens to look like this is
# checked on disk first.
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")


def download_allowed() -> bool:
    """True when the user explicitly allowed network downloads."""
    return os.environ.get(ALLOW_DOWNLOAD_ENV, "").strip().lower() in {"1", "true", "yes"}


def looks_like_hub_id(source: str) -> bool:
    return bool(_HUB_ID.match(source)) and not source.startswith((".", "/", "~"))


def hf_cache_dir() -> str:
    """The HF hub cache this process would read (honours HF_HOME / HF_HUB_CACHE)."""
    from huggingface_hub import constants

    return str(constants.HF_HUB_CACHE)


def fetch_command(repo_id: str, files: list[str] | None = None) -> str:
    """The shell command that puts ``repo_id`` into the HF cache on a connected machine."""
    suffix = "" if not files else " " + " ".join(files)
    return f"hf download {repo_id}{suffix}"


def missing_weights(what: str, files: list[str], where: str, command: str | None) -> MissingWeightsError:
    """One-line error naming the files, the place looked in and the fetch command."""
    msg = f"{what}: weights not found; looked for {', '.join(files)} in {where}"
    if command:
        msg += f"; on a machine with network access run `{command}` (or set {ALLOW_DOWNLOAD_ENV}=1 here)"
    return MissingWeightsError(msg)


def resolve_dir(source: str, required: list[str], what: str) -> Path:
    """Directory holding ``required`` files for ``source`` (a local dir or a cached hub id).

    A hub id resolves to its snapshot in the local HF cache; with downloads
    allowed a missing snapshot is fetched first. Raises
    :class:`MissingWeightsError` naming what was looked for otherwise.
    """
    path = Path(source).expanduser()
    if path.is_dir():
        absent = [f for f in required if not (path / f).exists()]
        if absent:
            raise missing_weights(what, absent, str(path), None)
        return path
    if not looks_like_hub_id(source):
        raise missing_weights(what, required, f"{path} (no such directory)", None)

    snapshot = _cached_snapshot(source)
    if snapshot is not None and all((snapshot / f).exists() for f in required):
        return snapshot
    if download_allowed():
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(repo_id=source))
    where = f"the local Hugging Face cache {hf_cache_dir()}"
    if snapshot is None and os.sep in source:
        where += f" (nor is there a directory {path})"
    if snapshot is not None:
        where += f" (snapshot {snapshot} is incomplete)"
    raise missing_weights(what, required, where, fetch_command(source))


def resolve_file(repo_id: str, filename: str) -> str | None:
    """Path of ``filename`` from hub repo ``repo_id`` in the local cache, or None."""
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(repo_id=repo_id, filename=filename)
    return found if isinstance(found, str) and os.path.isfile(found) else None


def _cached_snapshot(repo_id: str) -> Path | None:
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo_id=repo_id, local_files_only=True))
    except Exception as exc:  # noqa: BLE001 - any failure here just means "not cached"
        log.debug("%s is not in the local HF cache: %s: %s", repo_id, type(exc).__name__, exc)
        return None
