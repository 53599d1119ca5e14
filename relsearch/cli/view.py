"""CLI command: view (a local page for browsing an index; ``--no-browser`` for scripts)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from relsearch.cli.app import ColumnsOpt, DeviceOpt, app, user_errors
from relsearch.cli.core import IndexOpt
from relsearch.errors import RelsearchError

LOOPBACK = {"127.0.0.1", "localhost", "::1"}


@app.command("view")
@user_errors
def view_cmd(
    index: IndexOpt = None,
    old_index: Annotated[Path | None, typer.Argument(
        hidden=True, metavar="INDEX", help="Deprecated: the index directory (give it with --index).")] = None,
    host: Annotated[str, typer.Option("--host", help="Address to bind (loopback by default).")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", min=0, max=65535, help="Port (0 picks a free one).")] = 8765,
    k: Annotated[int, typer.Option("-k", "--top-k", min=1, max=200, help="Neighbours per encoder.")] = 20,
    encoders: ColumnsOpt = None,
    device: DeviceOpt = None,
    captions: Annotated[Path | None, typer.Option(
        "--captions", help="Caption bank (.jsonl) for encoders that ship none (page captions).")] = None,
    no_browser: Annotated[bool, typer.Option("--no-browser", help="Only serve; do not open a browser window.")]
    = False,
) -> None:
    """Serve a local page: browse the collection, click or drop an image, see its neighbours."""
    from relsearch.view.server import make_server

    if old_index is not None:  # the form before --index: still read, for scripts that use it
        if index is not None:
            raise RelsearchError("give the index once, with --index")
        index = old_index
    if index is None:
        from relsearch.home import choose_index

        chosen = choose_index()
        typer.echo(f"using index {chosen.path} ({chosen.reason})", err=True)
        index = chosen.path
    server = make_server(index, host=host, port=port, encoders=encoders, device=device, k=k,
                         captions=str(captions) if captions is not None else None)
    url = server.url
    if old_index is not None:  # said once it serves, so that an error stays one line
        typer.echo(f"note: the index goes after --index now: relsearch view --index {old_index}", err=True)
    typer.echo(f"serving {index} at {url}  (Ctrl-C to stop)")
    if host not in LOOPBACK:
        typer.echo(f"warning: {host} is reachable from other machines, and so are the index's images", err=True)
    if not no_browser:
        import webbrowser

        webbrowser.open(url)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        typer.echo("stopped")
    finally:
        server.server_close()
