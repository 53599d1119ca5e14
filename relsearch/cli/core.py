"""CLI commands: build-index, query, info."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from relsearch.analogy import DEFAULT_RULE as DEFAULT_ANALOGY_RULE
from relsearch.analogy import DEFAULT_WEIGHT as DEFAULT_ANALOGY_WEIGHT
from relsearch.cli.app import ColumnsOpt, DeviceOpt, JsonOpt, app, print_json, user_errors
from relsearch.collection.exclude import DEFAULT_EXCLUDES
from relsearch.errors import RelsearchError

IndexOpt = Annotated[Path | None, typer.Option(
    "--index", help="Index directory (default: the index home, $RELSEARCH_HOME or the XDG data dir; "
                    "see `relsearch info`).")]
ExcludeOpt = Annotated[list[str] | None, typer.Option(
    "--exclude-dir", metavar="NAME_OR_GLOB",
    help="Leave out folders with this name or glob at any depth, or this path relative to DIR "
         "(if it has a /); repeatable; case-insensitive. Always left out unless "
         "--no-default-excludes: " + ", ".join(DEFAULT_EXCLUDES) + ".")]
EncodersOpt = Annotated[str | None, typer.Option(
    "--encoders", help="Comma-separated encoders, each NAME or NAME@SOURCE.")]


@app.command("build-index")
@user_errors
def build_index_cmd(
    directories: Annotated[list[Path], typer.Argument(
        metavar="DIR...", help="Folders of images (scanned recursively); several make one library.")],
    index: IndexOpt = None,
    encoders: EncodersOpt = None,
    index_spec: Annotated[str | None, typer.Option(
        "--index-spec", help="Force a FAISS factory string, e.g. 'IVF1024,PQ48'.")] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1)] = 32,
    workers: Annotated[int | None, typer.Option("--workers", min=1, help="Decode workers (default: CPU count).")]
    = None,
    device: DeviceOpt = None,
    exclude_dir: ExcludeOpt = None,
    default_excludes: Annotated[bool | None, typer.Option(
        "--default-excludes/--no-default-excludes", show_default=False,
        help="Leave out the default folders (on for a new index; the choice is stored).")] = None,
    forget_excludes: Annotated[bool, typer.Option(
        "--forget-excludes", help="Drop the --exclude-dir patterns stored with the index first.")] = False,
    retry_failed: Annotated[bool, typer.Option(
        "--retry-failed", help="Try again the files that failed before, even if they have not changed.")] = False,
    ray: Annotated[str | None, typer.Option(
        "--ray", metavar="[ADDRESS]",
        help="Embed on Ray Data: alone, a local Ray started for the build; 'auto': the running cluster; "
             "ray://HOST:PORT.")] = None,
    ray_actors: Annotated[int | None, typer.Option(
        "--ray-actors", min=1, help="Encoder actors on a cluster without GPUs (default: half its CPUs).")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Embed folders of images into one FAISS index per encoder, with LMDB metadata.

    Folders and files can be left out with --exclude-dir and with .relsearchignore files
    (gitignore syntax, in any folder of the collection). --exclude-dir patterns are stored
    with the index, so later builds keep them without the flag; --forget-excludes drops them.
    """
    from relsearch.backends.ray_embed import embedding_step
    from relsearch.build import BuildOptions, NothingToIndexError, build_index
    from relsearch.interrupt import BuildInterrupted

    with embedding_step(ray, ray_actors) as step:
        try:
            opts = BuildOptions(encoders=encoders, index_spec=index_spec, batch_size=batch_size, workers=workers,
                                device=device, progress=not as_json and os.isatty(2),
                                exclude_dirs=tuple(exclude_dir or ()), default_excludes=default_excludes,
                                forget_excludes=forget_excludes, retry_failed=retry_failed, embedding=step)
        except ValueError as exc:
            raise RelsearchError(str(exc)) from exc
        try:
            report = build_index(directories, index, opts)
        except NothingToIndexError as exc:
            raise _nothing_indexed(exc, as_json) from None
        except BuildInterrupted as exc:  # Ctrl-C / SIGTERM: what was embedded is committed
            typer.echo(exc.message(), err=True)
            raise typer.Exit(code=exc.exit_code) from None
    _echo_build(report, as_json)


def _echo_build(report, as_json: bool) -> None:  # type: ignore[no-untyped-def]
    if as_json:
        d = report.to_dict()
        print_json({k: d[k] for k in ("index", "scanned", "added", "updated", "removed", "unchanged", "failed",
                                      "failed_before", "embedded", "excluded", "encoders", "generation",
                                      "repaired", "seconds", "notes")})
        return
    typer.echo(
        f"{report.index}: scanned {report.scanned}, added {report.added}, updated {report.updated}, "
        f"removed {report.removed}, unchanged {report.unchanged}, failed {len(report.failed)}, "
        f"excluded {report.excluded.get('folders', 0)} folders + {report.excluded.get('files', 0)} files "
        f"[{', '.join(report.encoders)}] in {report.seconds.get('total', 0):.1f}s"
    )
    for note in report.notes:
        typer.echo(f"  {note}")
    for line in report.repaired:
        typer.echo(f"  repaired: {line}", err=True)
    _echo_failed([f for f in report.failed if "status" not in f])
    if report.failed_before:
        typer.echo(f"  {report.failed_before} failed before, unchanged: skipped; --retry-failed to try again",
                   err=True)


def _echo_failed(failed: list[dict[str, str]], shown: int = 20) -> None:
    for f in failed[:shown]:
        typer.echo(f"  failed: {f['path']}: {f['error']}", err=True)
    if len(failed) > shown:
        typer.echo(f"  ... and {len(failed) - shown} more failures (see --json)", err=True)


def _nothing_indexed(exc: Exception, as_json: bool) -> RelsearchError:
    """Every file failed: show which and why (stderr, or the JSON on stdout), then the error line."""
    failed = getattr(exc, "failed", [])
    if as_json:
        print_json({"error": str(exc), "failed_count": len(failed), "failed": failed})
    else:
        _echo_failed(failed)
    where = "in the JSON" if as_json else "above"
    return RelsearchError(f"{exc}: {len(failed)} file(s) failed, listed {where}" if failed else str(exc))


def bare_ray_flag(argv: list[str]) -> list[str]:
    """``--ray`` with no address means a local Ray: typer has no optional-value options, so
    a bare ``--ray`` (one not followed by an address) is rewritten to ``--ray=local`` here."""
    from relsearch.backends.ray_embed import is_ray_address

    out = list(argv)
    for i, arg in enumerate(out):
        if arg == "--":
            break
        if arg == "--ray" and (i + 1 == len(out) or not is_ray_address(out[i + 1])):
            out[i] = "--ray=local"
    return out


MinScoreOpt = Annotated[float | None, typer.Option("--min-score", metavar="X", help="Leave out hits scoring below X.")]
PathsOpt = Annotated[bool, typer.Option(
    "--paths", help="Print only the matches' paths, one absolute path per line (for xargs).")]
CopyToOpt = Annotated[Path | None, typer.Option(
    "--copy-to", metavar="DIR", help="Copy the matches into DIR (created; nothing is overwritten).")]
LinkToOpt = Annotated[Path | None, typer.Option(
    "--link-to", metavar="DIR", help="Symlink the matches into DIR (created; nothing is overwritten).")]


@app.command("query")
@user_errors
def query_cmd(
    queries: Annotated[list[str] | None, typer.Argument(
        metavar="QUERY...", help="Query images (may be outside the collection) and/or text:CAPTION, combined.")]
    = None,
    weights: Annotated[str | None, typer.Option(
        "--weights", help="One weight per QUERY, e.g. 1,0.5 (default: all 1).")] = None,
    negatives: Annotated[list[str] | None, typer.Option(
        "--not", metavar="QUERY", help="Subtract this image or text:CAPTION (repeatable); never listed itself.")]
    = None,
    k: Annotated[int, typer.Option("-k", "--top-k", min=1, help="Neighbours per encoder.")] = 20,
    index: IndexOpt = None,
    encoders: ColumnsOpt = None,
    text: Annotated[str | None, typer.Option(
        "--text", help="Search with a caption: anonymous in relational columns, free text in clip.")] = None,
    html: Annotated[Path | None, typer.Option("--html", help="Also write an HTML page of the result.")] = None,
    sheet: Annotated[Path | None, typer.Option("--sheet", help="Also write a PNG contact sheet of the result.")]
    = None,
    analogy: Annotated[bool, typer.Option(
        "--analogy", help="Add an analogy column: relationally close, attribute far.")] = False,
    analogy_weight: Annotated[float, typer.Option(
        "--analogy-weight", min=0.0, help="Analogy score = relational cosine - WEIGHT x attribute penalty.")]
    = DEFAULT_ANALOGY_WEIGHT,
    analogy_rule: Annotated[str, typer.Option(
        "--analogy-rule", metavar="above_median|linear", help="Attribute penalty: above_median (attribute cosine above the candidates' "
        "median) or linear (the attribute cosine).")] = DEFAULT_ANALOGY_RULE,
    explain: Annotated[bool, typer.Option(
        "--explain", help="Add the caption each relational hit shares with the query.")] = False,
    captions: Annotated[Path | None, typer.Option(
        "--captions", help="Caption bank (.jsonl of {\"caption\": ...}) for encoders that ship none.")] = None,
    device: DeviceOpt = None,
    backend: Annotated[str, typer.Option(
        "--backend", metavar="faiss|milvus", help="faiss (the index directory) or milvus (collections written by `export milvus`).")]
    = "faiss",
    uri: Annotated[str | None, typer.Option("--uri", help="Milvus server or milvus-lite file (--backend milvus).")]
    = None,
    collection: Annotated[str | None, typer.Option(
        "--collection", help="Collection prefix of the exported index (--backend milvus).")] = None,
    min_score: MinScoreOpt = None,
    here: Annotated[bool, typer.Option(
        "--here", help="Only hits under the folder you are in (one folder of a library).")] = False,
    paths: PathsOpt = False,
    copy_to: CopyToOpt = None,
    link_to: LinkToOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Relational and attribute neighbours of QUERY, one column per encoder.

    QUERY is an image, text:CAPTION, or an indexed image by id:N (the id in --json) or path:REL
    (relative to the collection), searched with its stored vectors, no file needed. Exact copies
    are one hit (+N copies); an indexed copy of the query is shown as the query, not a match.

    Several queries are combined per column: the weighted sum of their vectors minus the
    --not ones, normalised. A text:CAPTION searches the columns with a text tower (relsim-mini,
    relsim: an anonymous caption; clip: free text) and is left out of the others, saying so.
    """
    from relsearch.cli.query_output import check_output_options, search_k
    from relsearch.modes import Modes

    check_output_options(paths, as_json, copy_to, link_to, min_score)
    if backend == "milvus":
        if here:
            raise RelsearchError("--here needs the index directory (--backend faiss)")
        from relsearch.backends.milvus import query_milvus_cli

        result = query_milvus_cli(queries, text, uri, k, collection, encoders, device,
                                  plain=not (weights or negatives or analogy or explain))
    elif backend != "faiss" or uri is not None or collection is not None:
        raise RelsearchError(f"--backend must be faiss or milvus, got {backend!r}" if backend != "faiss"
                             else "--uri and --collection go with --backend milvus")
    else:
        modes = Modes(analogy=analogy, explain=explain, analogy_weight=analogy_weight, analogy_rule=analogy_rule,
                      captions=str(captions) if captions is not None else None)
        result = _faiss_query(queries, text, index, search_k(k, queries, as_json), encoders, weights, negatives,
                              device, modes, here)
    _deliver(result, k, html, sheet, min_score, copy_to or link_to, link_to is not None,
             "paths" if paths else "json" if as_json else "table")


def _faiss_query(queries: list[str] | None, text: str | None, index: Path | None, k: int,  # type: ignore[no-untyped-def]
                 encoders: str | None, weights: str | None, negatives: list[str] | None, device: str | None,
                 modes, here: bool):
    """The composed query of the image / text terms against the index directory."""
    from relsearch.composed import composed_query

    terms = list(queries or []) + ([f"text:{text}"] if text is not None else [])
    if not terms:
        raise RelsearchError("give a query image, text:CAPTION or --text CAPTION")
    return composed_query(terms, index or chosen_index(), k=k, encoders=encoders, weights=weights,
                          negatives=negatives, device=device, modes=modes, here=here)


def _deliver(result, k: int, html: Path | None, sheet: Path | None, min_score: float | None,  # type: ignore[no-untyped-def]
             place: Path | None, link: bool, form: str) -> None:
    """Filter, write the page / sheet / copies (saying so on stderr), then print ``form``.

    The JSON keeps an indexed copy of the query among the hits (marked ``is_query``); every
    view shows it as the query instead of as a match."""
    from relsearch.cli import query_output as out

    if min_score is not None:
        out.apply_min_score(result, min_score)
    if form == "json":
        print_json(result.to_dict())
    result = out.without_query(result, k)
    if html is not None or sheet is not None:
        from relsearch.view import write_html, write_sheet

        if html is not None:
            typer.echo(f"wrote {write_html(result, html)}", err=True)
        if sheet is not None:
            typer.echo(f"wrote {write_sheet(result, sheet)}", err=True)
    if place is not None:
        typer.echo(out.placed_line(out.place_matches(result, place, link), place, link), err=True)
    if form == "paths":
        for p in out.match_paths(result):
            typer.echo(p)
    elif form == "table":
        typer.echo(format_table(result, k))


def chosen_index() -> Path:
    """With no --index: the only (or most recently built) index of the home; says which on stderr."""
    from relsearch.home import choose_index

    chosen = choose_index()
    typer.echo(f"using index {chosen.path} ({chosen.reason})", err=True)
    return chosen.path


def format_table(result, k: int) -> str:  # type: ignore[no-untyped-def]
    """Side-by-side text table: rank, then one (score, name) column per encoder."""
    names = result.ordered()
    from relsearch.view.html import hit_caption, query_caption, relation_line, relation_of
    from relsearch.view.names import hit_label

    def title(n: str) -> str:
        v = relation_of(result, n)
        if v is not None and not v.known:  # say it at the column's head, not only above the table
            return f"{n} (no known relation)"
        return n + (" (relational)" if result.kinds.get(n) == "relational" else "")

    if result.analogy is not None:  # the analogy column sits after the relational ones, as on the page
        rel = [n for n in names if result.kinds.get(n) == "relational"]
        names = rel + ["analogy"] + [n for n in names if n not in rel]
    width = max(34, 74 // max(1, len(names)))  # the columns share 80 characters, down to 34 each
    head = "rank  " + "".join(f"{title(n):<{width}}" for n in names)
    columns = {n: (result.analogy if n == "analogy" else result.results[n]) for n in names}
    lines = [f"query: {result.query}", *_query_in_collection(result),
             *(f"note: {n}" for n in getattr(result, "notes", []))]
    qcap = query_caption(result)
    if qcap is not None:
        lines.append(f"reads as: {qcap.text}  ({qcap.score:.3f})")
    lines += [line for n in names if (line := relation_line(result, n)) is not None]
    if result.analogy is not None:
        of = result.analogy_of
        lines.append(f"analogy = {of['relational']} - {of['weight']:g} x {of['attribute']} (cosines to the query)")
    lines += [head, "-" * len(head)]
    for r in range(k):
        cells = []
        for n in names:
            hits = columns[n]
            if r < len(hits):
                h = hits[r]
                label = hit_label(h, result.roots, width - 9)
                cells.append(f"{h.score:6.3f}  {label:<{width - 8}}")
            else:
                cells.append(" " * width)
        if not any(c.strip() for c in cells):
            break
        lines.append(f"{r + 1:>4}  " + "".join(cells))
        for n in names:  # --explain: the caption a relational hit shares with the query, under its row
            cap = hit_caption(result, n, columns[n][r]) if r < len(columns[n]) else None
            if cap is not None:
                lines.append(f"      {n}: {cap.text}  ({cap.score:.3f})")
    if not any(columns.values()):
        lines.append("      no matches")
    return "\n".join(lines)


def _query_in_collection(result) -> list[str]:  # type: ignore[no-untyped-def]
    """A line for each indexed file that holds the query's own bytes (it is not listed as a match)."""
    from relsearch.view.names import relative

    out = []
    for paths in result.query_in_collection.values():
        shown = [relative(p, result.roots) for p in paths]
        more = f" (+{len(shown) - 1}: {', '.join(shown[1:])})" if len(shown) > 1 else ""
        out.append(f"the query is indexed as {shown[0]}{more}; not listed among the matches")
    return out


@app.command("info")
@user_errors
def info_cmd(
    index: IndexOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """What indexes exist, how big, which encoders."""
    from relsearch.home import home_indexes, index_home
    from relsearch.indexdir import index_info

    targets = [index] if index is not None else home_indexes()
    if index is None and not targets:  # nothing built yet is an answer, not an error
        if as_json:
            print_json({"home": str(index_home()), "indexes": []})
        else:
            typer.echo(f"no index in {index_home()} yet; build one with: relsearch build-index DIR "
                       "(or pass --index; $RELSEARCH_HOME moves the home)")
        return
    infos = [index_info(index)] if index is not None else [_home_info(t) for t in targets]
    if as_json:
        print_json(infos[0] if index is not None else {"home": str(index_home()), "indexes": infos})
        return
    if index is None:
        typer.echo(f"index home {index_home()}: {len(infos)} index(es), most recently built first")
    for info in infos:
        if "damaged" in info:
            typer.echo(f"{info['index']}  DAMAGED: {info['damaged']}")
            continue
        typer.echo(f"{info['index']}  ({info['images']} images, {info['paths']} paths, "
                   f"{info['bytes_on_disk'] / 1e6:.1f} MB)  collection: {', '.join(info['roots'])}")
        for name, e in info["encoders"].items():
            f = e["faiss"]
            typer.echo(f"  {name:<12} {e['kind']:<10} dim {e['dim']:<5} weights {e['fingerprint']}  "
                       f"faiss {f.get('spec')} nprobe {f.get('nprobe')} ntotal {f.get('ntotal')}")


def _home_info(index: Path) -> dict[str, object]:
    """``index_info`` of one index of the home, or ``{"index", "damaged": reason}``: one damaged
    index is listed as such and does not hide the others."""
    from relsearch.indexdir import index_info

    try:
        return index_info(index)
    except RelsearchError as exc:
        return {"index": str(index), "damaged": str(exc)}
    except OSError as exc:
        return {"index": str(index), "damaged": f"cannot read it: {exc.strerror or exc}"}
