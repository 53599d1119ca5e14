"""What ``relsearch query`` gives a person: copies as one hit, the query marked, paths relative to
the collection, names on the sheet, what it wrote, and --paths / --min-score / --copy-to /
--link-to / id:N / path:REL, on real photographs through the CLI."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from engine_helpers import TinyColorEncoder
from format_helpers import photographs, write_jpeg
from PIL import Image
from typer.testing import CliRunner

from relsearch.cli import app
from relsearch.view.names import relative, shorten

runner = CliRunner()
LONG = "a folder name long enough to be shortened in the table"


def cli(*argv: object):
    return runner.invoke(app, [str(a) for a in argv])


@pytest.fixture(scope="module")
def lib(tmp_path_factory):
    """Six photographs in nested folders; the first also copied into backup/ and linked at the top."""
    base = tmp_path_factory.mktemp("lib")
    col, idx = base / "photos", base / "idx"
    photos = photographs(6)
    where = ["2024/winter", "2023/summer", f"2023/{LONG}", "2024/winter", "2023/summer", "misc"]
    paths = [write_jpeg(p, col / w / f"{p.stem}.jpg") for p, w in zip(photos, where)]
    (col / "backup").mkdir()
    shutil.copy(paths[0], col / "backup" / "copy.jpg")
    os.symlink(paths[0], col / "link.jpg")
    res = cli("build-index", col, "--index", idx, "--encoders", "tinycolor")
    assert res.exit_code == 0, res.output
    return col, idx, paths


def query_json(*argv: object) -> dict:
    res = cli("query", *argv, "--json")
    assert res.exit_code == 0, res.output
    return json.loads(res.stdout)


def test_exact_copies_are_one_hit_with_their_paths(lib, tmp_path):
    col, idx, paths = lib
    probe = write_jpeg(photographs(7)[6], tmp_path / "outside.jpg")  # not in the collection
    out = query_json(probe, "--index", idx, "-k", "10")
    hits = out["results"]["tinycolor"]
    assert len(hits) == 6 and len({h["id"] for h in hits}) == 6  # 8 files, 6 contents
    first = next(h for h in hits if h["copies"])
    assert {first["path"], *first["copies"]} == {str(paths[0]), str(col / "backup" / "copy.jpg"),
                                                  str(col / "link.jpg")}
    assert all(h["copies"] == [] for h in hits if h is not first)
    assert out["query_in_collection"] == [] and out["collection_roots"] == [str(col.resolve())]
    table = cli("query", probe, "--index", idx, "-k", "10").stdout
    assert "+2 copies" in table


def test_the_query_itself_is_marked_not_listed(lib):
    col, idx, paths = lib
    for query in (paths[0], col / "backup" / "copy.jpg"):  # the file or any copy of it
        out = query_json(query, "--index", idx, "-k", "3")
        hits = out["results"]["tinycolor"]
        (marked,) = out["query_in_collection"]
        # the JSON keeps its hits as they were, and marks the query's own
        assert [h["is_query"] for h in hits] == [True, False, False] and hits[0]["id"] == marked["id"]
        assert {marked["path"], *marked["copies"]} == {str(paths[0]), str(col / "backup" / "copy.jpg"),
                                                        str(col / "link.jpg")}
    table = cli("query", paths[0], "--index", idx, "-k", "3").stdout
    assert "the query is indexed as" in table and "backup/copy.jpg" in table
    rows = [line for line in table.splitlines() if line[:4].strip().isdigit()]
    assert len(rows) == 3 and not any(Path(paths[0]).name in r for r in rows)


def test_paths_are_relative_to_the_collection_with_folders_visible(lib):
    col, idx, paths = lib
    table = cli("query", paths[1], "--index", idx, "-k", "5").stdout
    assert "2024/winter/" in table and str(col) not in table.split("\n", 2)[2]
    # a path too long for its cell keeps its first folder and its file name, loses the middle
    row = next(line for line in table.splitlines() if "2023/a folder" in line)
    assert "\u2026" in row and row.rstrip().endswith(paths[2].name[-6:])


def test_shorten_and_relative():
    assert shorten("2023/summer/long_file_name.jpg", 15) == "2023/su\u2026ame.jpg"
    assert len(shorten("x" * 100, 20)) == 20 and shorten("short", 20) == "short"
    assert relative("/a/b/c.jpg", ["/a"]) == "b/c.jpg" and relative("/z/c.jpg", ["/a"]) == "/z/c.jpg"
    assert relative("/a/b/c.jpg", ["/a", "/x/y"]) == "a/b/c.jpg"  # several folders: its name stays


def test_html_and_sheet_say_what_they_wrote_and_the_sheet_names_files(lib, tmp_path, monkeypatch):
    _, idx, paths = lib
    page, sheet = tmp_path / "out.html", tmp_path / "out.png"
    res = cli("query", paths[1], "--index", idx, "-k", "4", "--html", page, "--sheet", sheet)
    assert res.exit_code == 0, res.output
    assert f"wrote {page}" in res.stderr and f"wrote {sheet}" in res.stderr
    assert "2024/winter/" in page.read_text() and "the query is indexed as 2023/summer/" in page.read_text()
    # the same sheet without file names differs exactly in one line of text under the thumbnails
    from relsearch.view import sheet as sheet_module

    monkeypatch.setattr(sheet_module, "name_line", lambda *a, **kw: "")
    bare = tmp_path / "bare.png"
    assert cli("query", paths[1], "--index", idx, "-k", "4", "--sheet", bare).exit_code == 0
    named, unnamed = (np.asarray(Image.open(p).convert("L"), dtype=np.int16) for p in (sheet, bare))
    assert named.shape == unnamed.shape
    rows = np.flatnonzero((np.abs(named - unnamed) > 60).any(axis=1))
    assert 4 <= len(rows) <= sheet_module.NAME_LINE, rows  # text there, and nowhere else


def test_paths_prints_one_absolute_path_per_line(lib):
    col, idx, paths = lib
    res = cli("query", paths[1], "--index", idx, "-k", "3", "--paths")
    assert res.exit_code == 0
    lines = res.stdout.splitlines()
    assert len(lines) == 3 and all(os.path.isabs(p) and os.path.isfile(p) for p in lines)
    assert str(paths[1]) not in lines  # the query is not a match
    hits = query_json(paths[1], "--index", idx, "-k", "4")["results"]["tinycolor"]
    assert lines == [h["path"] for h in hits if not h["is_query"]][:3]


def test_min_score_drops_weaker_hits(lib):
    _, idx, paths = lib
    every = query_json(paths[1], "--index", idx, "-k", "10")["results"]["tinycolor"]
    cut = sorted(h["score"] for h in every)[len(every) // 2]
    kept = query_json(paths[1], "--index", idx, "-k", "10", "--min-score", cut)["results"]["tinycolor"]
    assert kept and len(kept) < len(every) and all(h["score"] >= cut for h in kept)
    none = cli("query", paths[1], "--index", idx, "--min-score", "2")
    assert none.exit_code == 0 and "no matches" in none.stdout
    assert cli("query", paths[1], "--index", idx, "--min-score", "2", "--paths").stdout == ""


def test_copy_to_and_link_to_never_overwrite(lib, tmp_path):
    _, idx, paths = lib
    dest = tmp_path / "picked"
    dest.mkdir()
    want = cli("query", paths[1], "--index", idx, "-k", "3", "--paths").stdout.splitlines()
    taken = dest / Path(want[0]).name
    taken.write_bytes(b"mine")
    res = cli("query", paths[1], "--index", idx, "-k", "3", "--copy-to", dest)
    assert res.exit_code == 0 and f"copied 3 matches into {dest}" in res.stderr
    assert taken.read_bytes() == b"mine"  # not overwritten: the copy took another name
    stem, ext = os.path.splitext(taken.name)
    assert (dest / f"{stem}-2{ext}").read_bytes() == Path(want[0]).read_bytes()
    for src in want[1:]:
        assert (dest / Path(src).name).read_bytes() == Path(src).read_bytes()
    again = cli("query", paths[1], "--index", idx, "-k", "3", "--copy-to", dest)
    assert again.exit_code == 0 and len(list(dest.iterdir())) == 7
    links = tmp_path / "links"
    res = cli("query", paths[1], "--index", idx, "-k", "3", "--link-to", links)
    assert res.exit_code == 0 and "linked 3 matches" in res.stderr
    assert sorted(os.readlink(p) for p in links.iterdir()) == sorted(want)


@pytest.mark.parametrize("argv", [
    ("--paths", "--json"),
    ("--copy-to", "{file}"),
    ("--copy-to", "{dir}", "--link-to", "{dir}"),
    ("--min-score", "nan"),
])
def test_bad_output_options_are_one_line_before_any_search(lib, tmp_path, argv):
    _, idx, paths = lib
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    argv = [a.format(file=a_file, dir=tmp_path / "d") for a in argv]
    before = TinyColorEncoder.instances
    res = cli("query", paths[1], "--index", idx, *argv)
    assert res.exit_code == 2 and res.stderr.startswith("error: ") and len(res.stderr.strip().splitlines()) == 1
    assert TinyColorEncoder.instances == before and a_file.read_text() == "x" and not (tmp_path / "d").exists()


def test_query_by_id_or_path_uses_stored_vectors_without_the_file(lib, tmp_path):
    col, idx, paths = lib
    by_file = query_json(paths[1], "--index", idx, "-k", "4")
    rid = by_file["query_in_collection"][0]["id"]
    hidden = tmp_path / "away.jpg"
    shutil.move(paths[1], hidden)  # the file is gone: only the index knows it
    try:
        before = TinyColorEncoder.instances
        for term in (f"id:{rid}", f"path:{paths[1].relative_to(col)}"):
            out = query_json(term, "--index", idx, "-k", "4")
            assert TinyColorEncoder.instances == before, "an encoder was loaded for a stored query"
            assert [h["id"] for h in out["results"]["tinycolor"]] == [h["id"] for h in by_file["results"]["tinycolor"]]
            assert np.allclose([h["score"] for h in out["results"]["tinycolor"]],
                               [h["score"] for h in by_file["results"]["tinycolor"]], atol=1e-5)
            assert out["query_in_collection"][0]["id"] == rid and out["queries"][0]["query"] == term
        table = cli("query", f"id:{rid}", "--index", idx, "-k", "2").stdout
        assert "the query is indexed as 2023/summer/" in table
    finally:
        shutil.move(hidden, paths[1])


@pytest.mark.parametrize(("term", "says"), [
    ("id:99999", "no image id:99999 in this index"),
    ("id:seven", "id:N takes the number"),
    ("path:nowhere/x.jpg", "no indexed image at path:nowhere/x.jpg"),
    ("path:", "path: needs"),
])
def test_unknown_stored_query_is_one_line(lib, term, says):
    _, idx, _ = lib
    res = cli("query", term, "--index", idx)
    assert res.exit_code == 2 and says in res.stderr and len(res.stderr.strip().splitlines()) == 1
