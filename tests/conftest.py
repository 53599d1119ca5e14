"""Shared test set-up: offline, CPU-only, and a cheap deterministic test encoder."""

from __future__ import annotations

import logging
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

import pytest  # noqa: E402

from relsearch import encoders as _enc  # noqa: E402

# A real (if crude) encoder for engine tests: colour layout of a 4x4 thumbnail.
# Registered under a name users never see; the engine treats it like any other.
_enc.REGISTRY.setdefault("tinycolor", "engine_helpers:load_tinycolor")
_enc.REGISTRY.setdefault("tinyflip", "engine_helpers:load_tinyflip")


@pytest.fixture(autouse=True)
def _reset_cli_logging():
    """A CLI run leaves a handler on the stderr CliRunner swapped in; drop it after each test."""
    yield
    logger = logging.getLogger("relsearch")
    for handler in [h for h in logger.handlers if getattr(h, "_relsearch_cli", False)]:
        logger.removeHandler(handler)
    logger.setLevel(logging.NOTSET)


@pytest.fixture(autouse=True)
def _relsearch_home(tmp_path_factory, monkeypatch):
    """Every test gets its own index home and cache: nothing lands in the user's folders."""
    monkeypatch.setenv("RELSEARCH_HOME", str(tmp_path_factory.mktemp("relsearch-home")))


@pytest.fixture(autouse=True)
def _fresh_thread_choice():
    """A query test picks one intra-op thread for the process; the next test starts from the defaults."""
    import sys

    from relsearch.threads import use_threads

    torch = sys.modules.get("torch")
    before = torch.get_num_threads() if torch is not None else None
    yield
    use_threads(None)
    torch = sys.modules.get("torch")
    if torch is not None and before is not None and torch.get_num_threads() != before:
        torch.set_num_threads(before)
