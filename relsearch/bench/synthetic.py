"""Clustered unit vectors that look like image embeddings, for ANN benchmarks.

Uniform noise on the sphere is the wrong test for an ANN index: in 384
dimensions every point is almost equally far from every other, so nothing has
meaningful neighbours. Real embeddings are lumpy instead: a few dense topics and
a long tail of small ones, each topic spread along a handful of directions, all
sitting inside a cone rather than covering the sphere. This generator imitates
that with a mixture of low-rank Gaussians:

* cluster centres are grouped under "super" topics, and every centre leans
  towards one shared mean direction (the cone);
* cluster sizes are log-normal, so some clusters are 20x bigger than others;
* each cluster has its own random subspace (rank ``intrinsic_dim``) with
  decaying variances and its own overall spread, plus a little isotropic noise.

Queries are drawn from the same mixture (fresh samples), never copied from the
base, so a query's nearest neighbour is not itself.

    relsearch bench synthetic --n 1000000 --queries 1000 --d 384 --out data/ann
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class _Mixture:
    centres: np.ndarray  # [C, d] unit
    weights: np.ndarray  # [C] sums to 1
    spreads: np.ndarray  # [C] overall scale of the in-cluster deviation
    bases: np.ndarray  # [C, r, d] orthonormal-ish rows spanning each cluster
    sigmas: np.ndarray  # [r] decaying per-direction scale
    noise: float


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _mixture(d: int, n_clusters: int, rng: np.random.Generator, intrinsic_dim: int) -> _Mixture:
    mean_dir = _unit(rng.standard_normal(d))
    n_super = max(1, n_clusters // 16)
    supers = _unit(rng.standard_normal((n_super, d)) + 1.0 * mean_dir)
    parent = rng.integers(0, n_super, n_clusters)
    centres = _unit(supers[parent] + 0.6 * _unit(rng.standard_normal((n_clusters, d))))
    weights = rng.lognormal(0.0, 1.0, n_clusters)
    weights /= weights.sum()
    r = min(intrinsic_dim, d)
    bases = _unit(rng.standard_normal((n_clusters, r, d)).astype(np.float32))
    # Power-law variances along the cluster's own directions: a few dominant axes.
    sigmas = (1.0 / np.sqrt(np.arange(1, r + 1))).astype(np.float32)
    sigmas /= np.linalg.norm(sigmas)
    spreads = rng.uniform(0.45, 1.1, n_clusters).astype(np.float32)
    return _Mixture(centres.astype(np.float32), weights, spreads, bases, sigmas, noise=0.12)


def _sample(mix: _Mixture, n: int, rng: np.random.Generator) -> np.ndarray:
    d = mix.centres.shape[1]
    out = np.empty((n, d), dtype=np.float32)
    labels = rng.choice(len(mix.weights), size=n, p=mix.weights)
    order = np.argsort(labels, kind="stable")
    counts = np.bincount(labels, minlength=len(mix.weights))
    start = 0
    for c, cnt in enumerate(counts):
        if cnt == 0:
            continue
        rows = order[start : start + cnt]
        start += cnt
        z = rng.standard_normal((cnt, len(mix.sigmas))).astype(np.float32) * mix.sigmas
        dev = z @ mix.bases[c]
        dev += rng.standard_normal((cnt, d)).astype(np.float32) * (mix.noise / np.sqrt(d))
        out[rows] = mix.centres[c] + mix.spreads[c] * dev
    out /= np.linalg.norm(out, axis=1, keepdims=True)
    return out


def clustered_with_queries(
    n: int,
    n_queries: int,
    d: int = 384,
    n_clusters: int = 1000,
    seed: int = 0,
    intrinsic_dim: int = 24,
) -> tuple[np.ndarray, np.ndarray]:
    """Return ``(base [n, d], queries [n_queries, d])`` float32 unit vectors from one mixture."""
    if n < 1 or n_queries < 0 or d < 2 or n_clusters < 1:
        raise ValueError(f"bad sizes n={n} n_queries={n_queries} d={d} n_clusters={n_clusters}")
    rng = np.random.default_rng(seed)
    mix = _mixture(d, n_clusters, rng, intrinsic_dim)
    base = _sample(mix, n, np.random.default_rng([seed, 1]))
    queries = (
        _sample(mix, n_queries, np.random.default_rng([seed, 2]))
        if n_queries
        else np.empty((0, d), np.float32)
    )
    return base, queries


def clustered(
    n: int, d: int = 384, n_clusters: int = 1000, seed: int = 0, intrinsic_dim: int = 24
) -> np.ndarray:
    """``n`` clustered, L2-normalised float32 vectors of dimension ``d``."""
    return clustered_with_queries(n, 0, d, n_clusters, seed, intrinsic_dim)[0]
