"""CLI command: explain (why two images are alike, or not, in words)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from relsearch.cli.app import DeviceOpt, JsonOpt, app, print_json, user_errors


@app.command("explain")
@user_errors
def explain_cmd(
    a: Annotated[Path, typer.Argument(help="First image.")],
    b: Annotated[Path, typer.Argument(help="Second image.")],
    encoders: Annotated[str | None, typer.Option(
        "--encoders", help="Encoders to compare with (default: relsim-mini,imagenet).")] = None,
    captions: Annotated[Path | None, typer.Option(
        "--captions", help="Caption bank (.jsonl of {\"caption\": ...}) for encoders that ship none.")] = None,
    device: DeviceOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Both images' nearest captions, the caption they share, and their similarity per encoder."""
    from relsearch.encoders import DEFAULT_ENCODERS, get_encoders, parse_encoder_list
    from relsearch.explain import explain_pair
    from relsearch.query import load_query_image
    from relsearch.threads import use_query_threads

    use_query_threads()
    spec_text = encoders or DEFAULT_ENCODERS
    img_a, img_b = load_query_image(a), load_query_image(b)  # bad paths fail before any model loads
    encs = get_encoders(spec_text, device=device)
    specs = [str(s) for s in parse_encoder_list(spec_text)]
    result = explain_pair(img_a, img_b, encs, specs, captions=str(captions) if captions else None, device=device)
    if as_json:
        print_json(result.to_dict())
        return
    rel = result.relation

    def unknown(key: str) -> str:  # say it when a caption is no relation the encoder knows
        v = rel.get(key)
        return "" if v is None or v.known else f"\n   no relation {result.encoder} knows: {v.why}"

    typer.echo(f"a: {a}\n   reads as: {result.a.text}  ({result.a.score:.3f}){unknown('a')}")
    typer.echo(f"b: {b}\n   reads as: {result.b.text}  ({result.b.score:.3f}){unknown('b')}")
    typer.echo(f"shared ({result.encoder}): {result.shared.text}  ({result.shared.score:.3f}){unknown('shared')}")
    for kind, sims in (("relational", result.relational), ("attribute", result.attribute)):
        for name, cos in sims.items():
            typer.echo(f"{kind:<10} {name:<12} cosine {cos:.3f}")
