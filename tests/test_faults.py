"""Fault injection: SIGKILL a build at every named write point and at random moments.

About 40 killed builds (3 scenarios x 10 points + random moments); see
``tests/fault_harness.py`` for the checks and the soak.
"""

from __future__ import annotations

import random

import pytest
from fault_harness import SCENARIOS, Trial, fault_points, prepare, run_child


@pytest.fixture(scope="module")
def trials(tmp_path_factory):
    work = tmp_path_factory.mktemp("faults")
    return {kind: Trial(kind, work) for kind in SCENARIOS}


@pytest.mark.parametrize(("kind", "fault"), [(k, p) for k in SCENARIOS for p in fault_points(k)])
def test_kill_at_each_write_point(trials, kind, fault):
    result = trials[kind].run(fault=fault)
    # The fault point is reached by every build of these scenarios (the repeated
    # points twice): the build really died there.
    assert result["killed"], f"the build never reached {fault}"
    # Dying before the switch leaves the previous generation; after it, the new one.
    after_switch = fault.split("#")[0] in ("switched", "exported", "cleaned")
    assert result["answered"] == ("after" if after_switch else "before")


@pytest.mark.parametrize("kind", SCENARIOS)
def test_kill_at_random_moments(trials, kind, tmp_path):
    # Aim inside the build: its length measured here (the faster of two), kills in its first half.
    spans = []
    for n in range(2):
        root, idx, enc = prepare(kind, tmp_path / f"probe{n}")
        spans.append(run_child(root, idx, enc, timed=True))
    rng = random.Random(f"{kind}-random")
    for _ in range(2):
        delay = rng.uniform(0.02, 0.5) * min(spans)
        result = trials[kind].run(kill_after=delay)
        assert result["killed"], f"the kill {delay:.2f} s in landed after the build had finished"
