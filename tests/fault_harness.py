"""Kill a build (SIGKILL, in a subprocess) at each named write point or at a random
moment, then check what the index answers, resume it, and compare with a clean build.

Used by ``tests/test_faults.py`` (a CI-sized run) and, as a script, for the soak:

    PYTHONPATH=$PWD:$PWD/tests .venv/bin/python tests/fault_harness.py --soak 300 \
        --out benchmarks/results/fault_soak.json

Scenarios (each deterministic, so a clean build of the same steps is the reference):

- ``first``        a first build (no previous generation: nothing may answer, or all);
- ``incremental``  an index of 10 images, then 4 added, 2 changed, 2 removed, 1 touched;
- ``encoder``      an index of 10 images gets a second encoder and 2 more images.

After every kill: the index answers exactly generation G or exactly generation G+1
(every FAISS id has its record and raw vector, each path its vectors); a resumed
build ends equal to the clean build (same relative paths, ids and vectors); and
``relsearch verify`` passes.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent
SCENARIOS = ("first", "incremental", "encoder")
COMMIT_EVERY = 3  # several embedding chunks even on a 10-image collection

_CHILD = """
import sys
from relsearch import encoders
encoders.REGISTRY.setdefault("tinycolor", "engine_helpers:load_tinycolor")
encoders.REGISTRY.setdefault("tinyflip", "engine_helpers:load_tinyflip")
from relsearch.build import BuildOptions, build_index
import relsearch.index, relsearch.verify  # imported before the timer of a random kill starts
print("ready", flush=True)
build_index(sys.argv[1], sys.argv[2], BuildOptions(encoders=sys.argv[3] or None, progress=False,
            workers=1, batch_size=2, commit_every=int(sys.argv[4])))
"""


def _register() -> None:
    from relsearch import encoders

    encoders.REGISTRY.setdefault("tinycolor", "engine_helpers:load_tinycolor")
    encoders.REGISTRY.setdefault("tinyflip", "engine_helpers:load_tinyflip")


def build(root: Path, idx: Path, encoders: str | None) -> Any:
    """An uninterrupted build in this process."""
    from relsearch.build import BuildOptions, build_index

    _register()
    return build_index(root, idx, BuildOptions(encoders=encoders, progress=False, workers=1, batch_size=2,
                                               commit_every=COMMIT_EVERY))


def _png(path: Path, rgb: tuple[int, int, int], size: int = 24) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.new("RGB", (size, size), rgb)
    img.putpixel((1, 1), (255 - rgb[0], 255 - rgb[1], 255 - rgb[2]))
    img.save(path)


def prepare(kind: str, base: Path) -> tuple[Path, Path, str | None]:
    """Collection + index in the state just before the build under test; returns
    (root, index, --encoders of the build under test)."""
    from engine_helpers import make_collection

    root, idx = base / "col", base / "idx"
    paths = make_collection(root, 10)
    if kind == "first":
        return root, idx, "tinycolor"
    build(root, idx, "tinycolor")
    if kind == "incremental":
        for i in range(4):
            _png(root / "new" / f"n{i}.png", (40 * i, 200, 90))
        _png(paths[1], (250, 0, 0))
        _png(paths[4], (0, 0, 250))
        os.utime(paths[1], ns=(time.time_ns(), time.time_ns() + 10**9))
        os.utime(paths[4], ns=(time.time_ns(), time.time_ns() + 10**9))
        paths[2].unlink()
        paths[7].unlink()
        os.utime(paths[5], ns=(time.time_ns(), time.time_ns() + 2 * 10**9))
        return root, idx, None
    if kind == "encoder":
        _png(root / "late" / "a.png", (10, 20, 30))
        _png(root / "late" / "b.png", (200, 20, 30))
        return root, idx, "tinyflip"
    raise ValueError(f"unknown scenario {kind!r}")


def answers(root: Path, idx: Path) -> dict[str, dict[str, tuple[int, bytes]]] | None:
    """What the index answers: {encoder: {relative path: (id, vector bytes)}}, read
    through the FAISS ids as a query would; None when no build has finished yet."""
    from relsearch.errors import RelsearchError
    from relsearch.index import VectorIndex
    from relsearch.indexdir import open_index
    from relsearch.verify import faiss_ids

    try:
        opened = open_index(idx)
    except RelsearchError as exc:
        if "no finished build" in str(exc) or "no index at" in str(exc):
            return None
        raise
    out: dict[str, dict[str, tuple[int, bytes]]] = {}
    with opened:
        for name, entry in opened.manifest.encoders.items():
            index = VectorIndex.load(opened.faiss_file(name))
            ids = faiss_ids(index)
            records = opened.store.get_records(ids.tolist())
            missing = sorted(set(ids.tolist()) - set(records))
            assert not missing, f"{name}: FAISS ids without a record: {missing}"
            vecs = opened.store.get_vectors(name, ids, entry.dim, strict=True)
            col: dict[str, tuple[int, bytes]] = {}
            for i, v in zip(ids.tolist(), vecs):
                for p in records[i].paths:
                    col[os.path.relpath(p, root)] = (i, v.tobytes())
            if len(ids):  # and a real search finds a stored vector's own record
                _, found = index.search(vecs[:1], 1)
                assert int(found[0, 0]) == ids[0], f"{name}: searching id {ids[0]} found {found[0, 0]}"
            out[name] = col
    return out


def run_child(root: Path, idx: Path, encoders: str | None, fault: str | None = None,
              kill_after: float | None = None, timed: bool = False) -> Any:
    """Run a build in a subprocess, dying at ``fault`` or killed ``kill_after`` s after
    its imports; returns its exit status (``timed``: the build's seconds instead)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(TESTS)]),
           "HF_HUB_OFFLINE": "1", "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"}
    env.pop("RELSEARCH_FAULT", None)
    if fault:
        env["RELSEARCH_FAULT"] = fault
    proc = subprocess.Popen([sys.executable, "-c", _CHILD, str(root), str(idx), encoders or "", str(COMMIT_EVERY)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None
    proc.stdout.readline()  # "ready": interpreter and imports are up, the build starts now
    t = time.perf_counter()
    if kill_after is not None:
        try:
            proc.wait(timeout=kill_after)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGKILL)
    _, err = proc.communicate(timeout=120)
    if proc.returncode not in (0, -signal.SIGKILL):
        raise AssertionError(f"build failed without being killed: {err.decode(errors='replace')[-2000:]}")
    return time.perf_counter() - t if timed else proc.returncode


class Trial:
    """One scenario's reference states, computed once, for many kills."""

    def __init__(self, kind: str, work: Path) -> None:
        self.kind = kind
        self.work = work
        ref = work / f"ref-{kind}"
        root, idx, enc = prepare(kind, ref)
        self.before = answers(root, idx)
        build(root, idx, enc)
        self.after = answers(root, idx)
        self.n = 0

    def run(self, fault: str | None = None, kill_after: float | None = None) -> dict[str, Any]:
        """Kill one build; check; resume; check. Returns what happened."""
        from relsearch.verify import verify_index

        self.n += 1
        base = self.work / f"{self.kind}-{self.n}"
        root, idx, enc = prepare(self.kind, base)
        rc = run_child(root, idx, enc, fault=fault, kill_after=kill_after)
        seen = answers(root, idx)
        # the previous generation in full, or the new one in full: never a mixture
        state = "before" if seen == self.before else "after" if seen == self.after else None
        assert state is not None, f"{self.kind} killed at {fault or kill_after}: the index answers neither " \
                                  f"generation in full: {_diff(seen, self.before, self.after)}"
        build(root, idx, enc)  # the resumed build
        resumed = answers(root, idx)
        assert resumed == self.after, f"{self.kind} killed at {fault or kill_after}: resumed build differs " \
                                      f"from a clean one: {_diff(resumed, self.after, self.after)}"
        report = verify_index(idx)
        assert report.consistent, f"{self.kind} killed at {fault or kill_after}: verify: {report.problems}"
        assert not list((idx / "faiss").glob(".*")), "a temp file of the killed build was left behind"
        _assert_tidy(idx, f"{self.kind} killed at {fault or kill_after}")
        shutil.rmtree(base)
        return {"scenario": self.kind, "fault": fault, "kill_after": kill_after, "killed": rc != 0,
                "answered": state}


def _assert_tidy(idx: Path, what: str) -> None:
    """After the resumed build: ``manifest.json`` is the committed manifest again, and no FAISS file
    of an earlier generation is left (the steps ``exported`` and ``cleaned`` redone)."""
    from relsearch.indexdir import read_manifest, read_manifest_file

    committed = read_manifest(idx)
    assert read_manifest_file(idx).to_dict() == committed.to_dict(), f"{what}: manifest.json is stale"
    stale = [p.name for p in (idx / "faiss").iterdir() if f".{committed.generation}." not in p.name]
    assert not stale, f"{what}: files of an earlier generation left behind: {stale}"


def _diff(seen: Any, before: Any, after: Any) -> str:
    if seen is None or before is None or after is None:
        return f"seen {None if seen is None else sorted(seen)}, before {before is not None}, after {after is not None}"
    lines = []
    for name in sorted(set(seen) | set(after)):
        s, a, b = seen.get(name, {}), after.get(name, {}), (before or {}).get(name, {})
        lines.append(f"{name}: {len(s)} paths (before {len(b)}, after {len(a)}); "
                     f"not in after: {sorted(set(s) - set(a))[:3]}, missing from after: {sorted(set(a) - set(s))[:3]}")
    return "; ".join(lines)


def fault_points(kind: str) -> list[str]:
    """Every named write point, the repeating ones also at their second hit (the
    ``encoder`` scenario alone writes two FAISS files)."""
    from relsearch.build import FAULT_POINTS

    return [*FAULT_POINTS, "chunk#2"] + (["faiss#2"] if kind == "encoder" else [])


def soak(trials: int, seed: int, out: Path | None) -> dict[str, Any]:
    """Hundreds of kills: every point of every scenario, then random moments."""
    rng = random.Random(seed)
    t0 = time.perf_counter()
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="relsearch-soak-") as tmp:
        runs = {k: Trial(k, Path(tmp)) for k in SCENARIOS}
        # how long an uninterrupted child build takes, to aim the random kills
        probe = Path(tmp) / "probe"
        r, i, e = prepare("encoder", probe)
        span = run_child(r, i, e, timed=True)
        planned: list[tuple[str, str | None, float | None]] = [(k, p, None) for k in SCENARIOS for p in fault_points(k)]
        while len(planned) < trials:
            planned.append((rng.choice(SCENARIOS), None, rng.uniform(0.0, span * 1.1)))
        for n, (kind, fault, delay) in enumerate(planned[:trials], 1):
            results.append(runs[kind].run(fault=fault, kill_after=delay))
            if n % 25 == 0:
                print(f"{n} trials, {sum(r['killed'] for r in results)} killed, nothing lost", file=sys.stderr)
    summary = {
        "trials": len(results),
        "killed": sum(r["killed"] for r in results),
        "named_point_kills": sum(r["killed"] for r in results if r["fault"]),
        "random_kills": sum(r["killed"] for r in results if r["kill_after"] is not None),
        "answered_previous_generation": sum(r["answered"] == "before" for r in results),
        "answered_new_generation": sum(r["answered"] == "after" for r in results),
        "lost": 0,  # any loss raises before we get here
        "seconds": round(time.perf_counter() - t0, 1),
        "child_build_seconds": round(span, 2),
        "seed": seed,
        "command": f"PYTHONPATH=$PWD:$PWD/tests python tests/fault_harness.py --soak {trials} --seed {seed}",
    }
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps({**summary, "results": results}, indent=1) + "\n")
    return summary


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--soak", type=int, default=100, help="number of killed builds")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    print(json.dumps(soak(args.soak, args.seed, args.out), indent=1))


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
