"""`relsearch query --text`: anonymous captions search the relational column (caption space)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from engine_helpers import make_collection
from typer.testing import CliRunner

from relsearch.cli import app

runner = CliRunner()


def test_text_query_finds_the_family_of_the_caption(tmp_path):
    from relsearch.corpus.art import OPENCLIPART_DIR
    from relsearch.corpus.compose import compose

    if not OPENCLIPART_DIR.is_dir():
        pytest.skip("openclipart-png is not installed (tools/setup.sh installs it)")
    col, idx = tmp_path / "col", tmp_path / "idx"
    compose(col, n_per_family=0, split="test", seed=5, grouped=True, n_groups=5, size_range=(192, 256))
    res = runner.invoke(app, ["build-index", str(col), "--index", str(idx), "--encoders", "relsim-mini", "--json"])
    assert res.exit_code == 0, res.output
    family = {str((col / r["path"]).resolve()): r["family"]
              for r in map(json.loads, (col / "labels.jsonl").read_text().splitlines())}
    for caption, want in [("{Object}s arranged in a ring around a central {Center}", "orbit"),
                          ("{Object}s piled on top of one another into a tower", "stack")]:
        res = runner.invoke(app, ["query", "--text", caption, "-k", "5", "--index", str(idx), "--json"])
        assert res.exit_code == 0, res.output
        out = json.loads(res.stdout)
        assert out["query"] == caption
        found = [family[str(Path(h["path"]).resolve())] for h in out["results"]["relsim-mini"]]
        assert found.count(want) >= 3, (caption, found)  # 5 scenes of each family exist; chance is 1/9


def test_text_query_needs_a_relational_column(tmp_path):
    root, idx = tmp_path / "col", tmp_path / "idx"
    make_collection(root, 3)
    assert runner.invoke(app, ["build-index", str(root), "--index", str(idx), "--encoders", "tinycolor"]).exit_code == 0
    res = runner.invoke(app, ["query", "--text", "{Object} nested inside {Container}", "--index", str(idx)])
    assert res.exit_code == 2 and "caption tower" in res.stderr and len(res.stderr.strip().splitlines()) == 1
    res = runner.invoke(app, ["query", "--index", str(idx)])
    assert res.exit_code == 2 and "give a query" in res.stderr
