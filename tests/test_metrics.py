"""Retrieval metrics on tiny hand-made inputs whose answers are worked out by hand."""

from __future__ import annotations

import numpy as np
import pytest

from relsearch.retrieval_metrics import (
    leakage_at_k,
    neighbours,
    precision_at_k,
    recall_at_k,
    retrieval_report,
    text_to_image_precision,
)


def _unit(degrees: list[float]) -> np.ndarray:
    r = np.radians(degrees)
    return np.stack([np.cos(r), np.sin(r)], axis=1).astype(np.float32)


# Five items on the unit circle. Item 4 has no relation (family "none"): it sits in the
# database but is never a query. Neighbour orders (self excluded), worked out by angle:
#   0 (0 deg):  4, 1, 2, 3     1 (10 deg): 4, 0, 2, 3
#   2 (25 deg): 1, 4, 0, 3     3 (90 deg): 2, 1, 4, 0
EMB = _unit([0, 10, 25, 90, 5])
FAMILIES = ["a", "a", "b", "b", "none"]
OBJECTS = [{"x"}, {"y"}, {"x"}, {"z"}, {"x"}]
NN = np.array([[4, 1, 2, 3], [4, 0, 2, 3], [1, 4, 0, 3], [2, 1, 4, 0], [0, 1, 2, 3]])


def test_neighbours_exclude_self_and_rank_by_similarity() -> None:
    assert neighbours(EMB, 4).tolist() == NN.tolist()


def test_precision_recall_map_by_hand() -> None:
    # top-2 hits: q0 [none, a] -> 1/2; q1 [none, a] -> 1/2; q2 [a, none] -> 0; q3 [b, a] -> 1/2
    assert precision_at_k(EMB, FAMILIES, k=2) == pytest.approx((0.5 + 0.5 + 0 + 0.5) / 4)
    # each query has one other family member: found by q0, q1, q3
    assert recall_at_k(EMB, FAMILIES, k=2) == pytest.approx(0.75)
    # AP@2 normalised by min(2, 1): q0 1/2, q1 1/2, q2 0, q3 1
    assert retrieval_report(EMB, FAMILIES, k=2)["map_at_k"] == pytest.approx(0.5)


def test_leakage_counts_shared_objects_in_other_families() -> None:
    # q0 {x}: item 4 shares x, family none -> leak; item 1 shares nothing -> 1/2
    # q1 {y}: nothing shared -> 0; q2 {x}: item 4 -> 1/2; q3 {z}: 0
    assert leakage_at_k(EMB, FAMILIES, OBJECTS, k=2) == pytest.approx(0.25)
    # A neighbour sharing an object within the same family is a match, not a leak.
    same_family = [{"x"}, {"x"}, {"q"}, {"r"}, {"s"}]
    assert leakage_at_k(EMB, FAMILIES, same_family, k=2) == pytest.approx(0.0)


def test_precomputed_neighbour_ids_give_the_same_answers() -> None:
    assert precision_at_k(NN, FAMILIES, k=2) == precision_at_k(EMB, FAMILIES, k=2)
    assert leakage_at_k(NN, FAMILIES, OBJECTS, k=2) == leakage_at_k(EMB, FAMILIES, OBJECTS, k=2)


def test_report_has_overall_and_per_family_values() -> None:
    rep = retrieval_report(EMB, FAMILIES, OBJECTS, k=2)
    assert rep["queries"] == 4 and rep["items"] == 5 and rep["k"] == 2
    assert rep["precision_at_k"] == pytest.approx(0.375)
    assert rep["map_at_k"] == pytest.approx(0.5)
    assert rep["recall_at_k"] == pytest.approx(0.75)
    assert rep["leakage_at_k"] == pytest.approx(0.25)
    assert set(rep["per_family"]) == {"a", "b"}  # "none" is never a query
    assert rep["per_family"]["a"]["precision_at_k"] == pytest.approx(0.5)
    assert rep["per_family"]["b"]["precision_at_k"] == pytest.approx(0.25)
    assert rep["per_family"]["b"]["map_at_k"] == pytest.approx(0.5)
    assert "leakage_at_k" not in retrieval_report(EMB, FAMILIES, None, k=2)


def test_perfect_and_worst_rankings() -> None:
    # Two tight clusters far apart: every neighbour within k is in the family.
    emb = _unit([0, 1, 2, 180, 181, 182])
    fams = ["a", "a", "a", "b", "b", "b"]
    rep = retrieval_report(emb, fams, k=2)
    assert rep["precision_at_k"] == 1.0 and rep["map_at_k"] == 1.0 and rep["recall_at_k"] == 1.0
    # Alternating labels on the same clusters: top-2 never match.
    worst = ["a", "b", "c", "b", "c", "a"]
    nn = neighbours(emb, 2)
    assert nn[0].tolist() == [1, 2]
    assert precision_at_k(emb, worst, k=2) == pytest.approx(0.0)


def test_text_to_image_precision_by_hand() -> None:
    texts = _unit([0, 90])
    out = text_to_image_precision(texts, ["a", "b"], EMB, FAMILIES, k=2)
    # text a (0 deg): images 0 (a), 4 (none) -> 1/2; text b (90 deg): 3 (b), 2 (b) -> 1
    assert out["precision_at_k"] == pytest.approx(0.75)
    assert out["per_family"] == {"a": pytest.approx(0.5), "b": pytest.approx(1.0)}


def test_mismatched_lengths_raise() -> None:
    with pytest.raises(ValueError):
        precision_at_k(EMB, FAMILIES[:3], k=2)
