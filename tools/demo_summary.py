"""Print, per encoder column, which relation family each neighbour of a demo query shows.

Reads ``relsearch query --json`` on stdin and the composed collection's labels.jsonl.
"""

from __future__ import annotations

import json
import os
import sys


def main(collection: str, want: str) -> None:
    with open(os.path.join(collection, "labels.jsonl")) as f:
        family = {os.path.abspath(os.path.join(collection, r["path"])): r["family"] for r in map(json.loads, f)}
    for enc, hits in json.load(sys.stdin)["results"].items():
        fams = [family.get(os.path.abspath(h["path"]), "?") for h in hits]
        print(f"{enc:>12}: {fams.count(want)}/{len(fams)} neighbours are {want} scenes  ({', '.join(fams)})")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
