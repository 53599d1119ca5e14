"""A real-vector ANN test set: MiniLM embeddings of Debian package descriptions.

The prose is the English long descriptions of every Debian package
(``apt-get -o Acquire::Languages=en update`` fetches them; the ``Translation-en``
index under /var/lib/apt/lists is read directly). Each description is split
into sentences; sentences are deduplicated and kept between MIN_CHARS and
MAX_CHARS characters. Packages are split by a hash of their name, so the query
sentences come from packages whose text is not in the base at all: the
queries are the same kind of prose, but none of them (and none of their
package's sentences) is a base vector. Both sets are embedded with the
project's own MiniLM text tower and cached as .npy, with the sentences beside
them as text for inspection.

    relsearch bench text-vectors --n 100000 --queries 2000 --out /work/coord/data/i10a/prose100k
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import re
import subprocess
import sys
import time

import numpy as np

from relsearch.errors import RelsearchError

APT_LISTS = "/var/lib/apt/lists"
MIN_CHARS = 40
MAX_CHARS = 400
#: One package in this many goes to the query side.
QUERY_PACKAGE_EVERY = 10
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9\"'(])")


def translation_files(lists_dir: str = APT_LISTS) -> list[str]:
    """The English description indexes apt has fetched, largest first."""
    files = glob.glob(os.path.join(lists_dir, "*_i18n_Translation-en*"))
    return sorted(files, key=os.path.getsize, reverse=True)


def _read_index(path: str) -> str:
    if path.endswith((".lz4", ".gz", ".xz", ".zst", ".bz2")):
        # apt's own helper knows every compression apt may have used.
        return subprocess.run(
            ["/usr/lib/apt/apt-helper", "cat-file", path], check=True, capture_output=True, text=True
        ).stdout
    with open(path, encoding="utf-8", errors="replace") as f:
        return f.read()


def package_sentences(text: str) -> dict[str, list[str]]:
    """``{package: [sentence, ...]}`` from a Translation-en index's text."""
    out: dict[str, list[str]] = {}
    for block in text.split("\n\n"):
        pkg, lines, in_desc = None, [], False
        for line in block.splitlines():
            if line.startswith("Package: "):
                pkg = line[9:].strip()
            elif line.startswith("Description-en: "):
                in_desc = True
                lines.append(line[16:].strip() + ".")  # the synopsis is one sentence
            elif in_desc and line.startswith(" "):
                body = line.strip()
                lines.append("\n" if body == "." else body)
            else:
                in_desc = False
        if not pkg or not lines:
            continue
        sents = []
        for para in " ".join(lines).split("\n"):
            para = " ".join(para.split())
            sents.extend(s.strip() for s in _SENTENCE_END.split(para))
        out.setdefault(pkg, []).extend(s for s in sents if MIN_CHARS <= len(s) <= MAX_CHARS)
    return out


def _is_query_package(pkg: str) -> bool:
    return int(hashlib.sha1(pkg.encode()).hexdigest()[:8], 16) % QUERY_PACKAGE_EVERY == 0


def split_sentences(pkgs: dict[str, list[str]], n: int, n_queries: int, seed: int = 0) -> tuple[list[str], list[str]]:
    """Deduplicated base and query sentences; no query sentence appears in the base."""
    base, query, seen = [], [], set()
    for pkg in sorted(pkgs):
        side = query if _is_query_package(pkg) else base
        for s in pkgs[pkg]:
            key = s.lower()
            if key not in seen:
                seen.add(key)
                side.append(s)
    rng = np.random.default_rng(seed)
    if len(base) < n or len(query) < n_queries:
        raise RelsearchError(
            f"only {len(base)} base and {len(query)} query sentences available, asked for {n} and {n_queries}"
        )
    bi = np.sort(rng.choice(len(base), n, replace=False))
    qi = np.sort(rng.choice(len(query), n_queries, replace=False))
    return [base[i] for i in bi], [query[i] for i in qi]


#: Sentences per cached chunk: a killed run resumes from the last chunk written.
CHUNK = 4096


def _embed_chunk(args: tuple[list[str], str]) -> str:
    """Embed one chunk in a worker process (one torch thread) and save it; returns the file."""
    sentences, path = args
    import torch

    from relsearch.encoders.text import text_tower

    # One intra-op thread per process: on a shared machine two threads per
    # operator wait for each other (see benchmarks/README.md, Throughput).
    torch.set_num_threads(1)
    vecs = text_tower("cpu").embed_text(sentences)
    np.save(path + ".tmp.npy", vecs)
    os.replace(path + ".tmp.npy", path)
    return path


def embed(sentences: list[str], cache_dir: str, workers: int = 2, log: bool = True) -> np.ndarray:
    """MiniLM vectors of ``sentences`` (float32 unit rows), chunk by chunk in ``workers`` processes.

    Chunks are cached under ``cache_dir`` and reused, so an interrupted run resumes.
    """
    from concurrent.futures import ProcessPoolExecutor

    os.makedirs(cache_dir, exist_ok=True)
    # Sorting by length keeps padding small; the order is restored afterwards.
    order = np.argsort([len(s) for s in sentences], kind="stable")
    chunks = [order[i : i + CHUNK] for i in range(0, len(order), CHUNK)]
    files = [os.path.join(cache_dir, f"chunk{i:05d}.npy") for i in range(len(chunks))]
    todo = [([sentences[j] for j in c], f) for c, f in zip(chunks, files) if not os.path.exists(f)]
    t0 = time.perf_counter()
    if todo:
        with ProcessPoolExecutor(workers) as pool:
            for done, _ in enumerate(pool.map(_embed_chunk, todo), 1):
                if log:
                    rate = done * CHUNK / (time.perf_counter() - t0)
                    print(f"chunk {done}/{len(todo)} ({rate:.0f} sentences/s)", file=sys.stderr, flush=True)
    out = np.empty((len(sentences), 384), dtype=np.float32)
    for c, f in zip(chunks, files):
        out[c] = np.load(f)
    return out


def make_text_vectors(out_dir: str, n: int = 100_000, n_queries: int = 2000, seed: int = 0, workers: int = 2) -> dict:
    """Write ``base.npy``, ``queries.npy`` and their sentences under ``out_dir``; returns a summary."""
    files = translation_files()
    if not files:
        raise RelsearchError(
            "no Debian Translation-en index found: run `apt-get -o Acquire::Languages=en update` first"
        )
    pkgs: dict[str, list[str]] = {}
    for path in files:
        for pkg, sents in package_sentences(_read_index(path)).items():
            pkgs.setdefault(pkg, sents)  # the largest index (main) wins for a package in several
    base, queries = split_sentences(pkgs, n, n_queries, seed)
    os.makedirs(out_dir, exist_ok=True)
    for name, sents in (("base", base), ("queries", queries)):
        with open(os.path.join(out_dir, f"{name}.txt"), "w", encoding="utf-8") as f:
            f.writelines(s + "\n" for s in sents)
    t0 = time.perf_counter()
    qv = embed(queries, os.path.join(out_dir, "cache", f"queries-{seed}-{n_queries}"), workers)
    np.save(os.path.join(out_dir, "queries.npy"), qv)
    bv = embed(base, os.path.join(out_dir, "cache", f"base-{seed}-{n}"), workers)
    np.save(os.path.join(out_dir, "base.npy"), bv)
    summary = {
        "source": files,
        "packages": len(pkgs),
        "n": len(base),
        "queries": len(queries),
        "d": int(bv.shape[1]),
        "seed": seed,
        "embed_s": round(time.perf_counter() - t0, 1),
    }
    with open(os.path.join(out_dir, "meta.json"), "w") as f:
        json.dump(summary, f, indent=2)
    return summary
