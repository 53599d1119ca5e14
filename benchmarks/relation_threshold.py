"""Calibrate ``relsearch.explain.KNOWN_MIN_SCORE`` (see ``relsearch.bench.health.calibrate_relation``):

    python benchmarks/relation_threshold.py SCENES_DIR PHOTOS_DIR_OR_LABELS [--encoder relsim-mini@DIR] [--results-dir DIR]
"""

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT)]

from relsearch.bench.health import calibrate_relation  # noqa: E402

if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("scenes", help="folder for the held-out composed sets (made when missing)")
    ap.add_argument("photos", help="real photographs: a folder or a labels .jsonl")
    ap.add_argument("--results-dir", default=None)
    ap.add_argument("--encoder", default="relsim-mini", help="relational encoder spec (relsim-mini@DIR)")
    args = ap.parse_args()
    print(json.dumps(calibrate_relation(args.scenes, args.photos, results_dir=args.results_dir, encoder=args.encoder), indent=2))
