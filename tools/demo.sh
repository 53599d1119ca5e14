#!/usr/bin/env bash
# The README's first command: compose a small example collection from real clip art,
# index it with the default encoders (relsim-mini = relational, imagenet = attribute),
# and query it with a scene from outside the collection. Offline; about a minute on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
# Indexes and caches live in a per-user home ($RELSEARCH_HOME, else the XDG data dir); the demo
# keeps its own inside the repository, so it never touches the user's.
export RELSEARCH_HOME="$PWD/examples/generated/home"
rs=.venv/bin/relsearch
ex=examples/generated
if [ ! -f "$ex/collection/labels.jsonl" ]; then
  # Some groups sit on wallpaper photographs never used in training, saved as JPEG at varied quality.
  $rs compose --out "$ex/collection" --split test --grouped --groups 6 --per-family 1 --seed 0 \
    --backgrounds mixed --photos eval --realism >/dev/null
  $rs compose --out "$ex/queries" --split test --per-family 1 --seed 1 >/dev/null
fi
rm -rf "$RELSEARCH_HOME/indexes/collection"  # the demo always shows a fresh build with the installed weights
$rs build-index "$ex/collection"               # -> $RELSEARCH_HOME/indexes/collection
query=$(.venv/bin/python -c 'import json,sys; print(next(r["path"] for r in map(json.loads, open(sys.argv[1])) if r["family"] == "orbit"))' "$ex/queries/labels.jsonl")
# No --index: the home's only index. --analogy adds relationally-close-but-unlike hits, --explain the
# caption each relational hit shares with the query.
$rs query "$ex/queries/$query" -k 10 --analogy --explain --html "$ex/result.html" --sheet "$ex/result.png"
# What the columns found, by the relation each neighbour was composed with (labels.jsonl):
$rs query "$ex/queries/$query" -k 10 --json 2>/dev/null | .venv/bin/python tools/demo_summary.py "$ex/collection" orbit
echo "query: $ex/queries/$query (an orbit scene); picture: $ex/result.png, page: $ex/result.html"
