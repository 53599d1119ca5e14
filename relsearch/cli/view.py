"""CLI commands: view, serve (a local page for browsing an index)."""

from __future__ import annotations

from pathlib import Path

import typer

from relsearch.cli.app import ColumnsOpt, app, user_errors

LOOPBACK = {"127.0.0.1", "localhost", "::1"}


def run_server(index: Path, host: str, port: int, k: int, encoders: str | None, device: str | None,
               open_browser: bool) -> None:
    from relsearch.view.server import make_server

    server = make_server(index, host=host, port=port, encoders=encoders, device=device, k=k)
    url = server.url
    typer.echo(f"serving {index} at {url}  (Ctrl-C to stop)")
    if host not in LOOPBACK:
        typer.echo(f"warning: {host} is reachable from other machines, and so are the index's images", err=True)
    if open_browser:
        import webbrowser

        webbrowser.open(url)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        typer.echo("stopped")
    finally:
        server.server_close()


HostOpt = typer.Option("127.0.0.1", "--host", help="Address to bind (loopback by default).")
PortOpt = typer.Option(8765, "--port", min=0, max=65535, help="Port (0 picks a free one).")
KOpt = typer.Option(20, "-k", "--k", min=1, max=200, help="Neighbours per encoder.")
NoBrowserOpt = typer.Option(False, "--no-browser", help="Do not open a browser window.")


@app.command("view")
@user_errors
def view_cmd(
    index: Path = typer.Argument(..., help="Index directory."),
    host: str = HostOpt,
    port: int = PortOpt,
    k: int = KOpt,
    encoders: str | None = ColumnsOpt,
    device: str | None = typer.Option(None, "--device"),
    no_browser: bool = NoBrowserOpt,
) -> None:
    """Open a local page: drop or pick an image, see one row of neighbours per encoder."""
    run_server(index, host, port, k, encoders, device, not no_browser)


@app.command("serve")
@user_errors
def serve_cmd(
    index: Path = typer.Option(..., "--index", help="Index directory."),
    host: str = HostOpt,
    port: int = PortOpt,
    k: int = KOpt,
    encoders: str | None = ColumnsOpt,
    device: str | None = typer.Option(None, "--device"),
    no_browser: bool = NoBrowserOpt,
) -> None:
    """Same page as ``view``, for scripts: ``serve --index PATH --no-browser``."""
    run_server(index, host, port, k, encoders, device, not no_browser)
