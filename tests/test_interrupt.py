"""No lost work: a build commits by time as well as by count, and Ctrl-C / SIGTERM commit
what is embedded before the build exits; the next build embeds only the rest.

The Ctrl-C test is the real thing: ``relsearch build-index`` on photographs with the
shipped encoders, in a pseudo-terminal, stopped by the terminal's interrupt character.
The others use a slow copy of the test encoder in a child process, so that a signal
lands mid-build on any machine.
"""

from __future__ import annotations

import fcntl
import json
import os
import pty
import random
import re
import select
import shutil
import signal
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

import pytest
from engine_helpers import make_collection
from PIL import Image

from relsearch import build as build_mod
from relsearch.build import BuildOptions, build_index
from relsearch.errors import RelsearchError
from relsearch.interrupt import BuildInterrupted

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent
PHOTOS = Path("/usr/share/backgrounds")

# `relsearch` with a slow test encoder ("slowcolor": the tinycolor thumbnail, 40 ms an
# image) that says on stderr how many images it has embedded.
_SLOW_CLI = f"""
import sys, time
sys.path.insert(0, {str(TESTS)!r})
from engine_helpers import TinyColorEncoder
from relsearch import encoders

class SlowColor(TinyColorEncoder):
    name = "slowcolor"

    def embed(self, images):
        time.sleep(0.04 * len(images))
        out = TinyColorEncoder.embed(self, images)
        print("embedded", TinyColorEncoder.images_embedded, file=sys.stderr, flush=True)
        return out

def load(source=None, device=None):
    return SlowColor(source)

encoders.REGISTRY["slowcolor"] = "__main__:load"
from relsearch.cli import main
main(sys.argv[1:])
"""


@pytest.fixture(autouse=True)
def default_signal_handlers():
    """Run each test with Python's own SIGINT / SIGTERM handling, whatever the runner set.

    A test run started in the background of a script inherits SIGINT ignored, and a build
    keeps an ignored signal ignored (as ``nohup`` or ``cmd &`` ask); the tests here are about
    the handled case, and children started by them get the default disposition at exec.
    """
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    yield
    for sig, handler in previous.items():
        signal.signal(sig, handler)


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "RELSEARCH_FAULT"}
    env.update(HF_HUB_OFFLINE="1", CUDA_VISIBLE_DEVICES="", RELSEARCH_HOME=str(tmp_path / "home"),
               PYTHONPATH=str(ROOT), **extra)
    return env


def _photographs(dest: Path, n: int = 40) -> list[Path]:
    """``n`` distinct photographs: the system's wallpapers, then crops of them."""
    src = sorted(PHOTOS.glob("*.jpg"))
    if len(src) < 8:
        pytest.skip(f"needs the photographs in {PHOTOS}")
    dest.mkdir(parents=True)
    out = [Path(shutil.copy(p, dest / p.name)) for p in src[:n]]
    rng = random.Random(0)
    for i in range(n - len(out)):
        with Image.open(src[i % len(src)]) as im:
            im.draft("RGB", (1200, 1200))
            im = im.convert("RGB")
            w, h = im.size
            box = (rng.randint(0, w // 3), rng.randint(0, h // 3), rng.randint(2 * w // 3, w), rng.randint(2 * h // 3, h))
            crop = dest / f"crop_{i:02d}.jpg"
            im.crop(box).save(crop, quality=88)
            out.append(crop)
    return out


def _read_until(fd: int, pattern: re.Pattern[bytes], deadline: float, buf: bytearray) -> re.Match[bytes] | None:
    while time.monotonic() < deadline:
        m = pattern.search(bytes(buf))
        if m:
            return m
        ready, _, _ = select.select([fd], [], [], 0.5)
        if ready:
            try:
                chunk = os.read(fd, 4096)
            except OSError:  # the child closed the terminal
                return pattern.search(bytes(buf))
            if not chunk:
                return pattern.search(bytes(buf))
            buf += chunk
    return None


def _drain(fd: int, buf: bytearray, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.5)
        if not ready:
            continue
        try:
            chunk = os.read(fd, 4096)
        except OSError:
            return
        if not chunk:
            return
        buf += chunk


def _run_in_terminal_and_press_ctrl_c(argv: list[str], env: dict[str, str], after: re.Pattern[bytes],
                                      total: int) -> tuple[int, str, int]:
    """Run ``argv`` in a pseudo-terminal, type Ctrl-C once ``after`` shows ``>= total // 3``
    images done; returns (exit code, what the terminal showed, images done when Ctrl-C went)."""
    pid, fd = pty.fork()
    if pid == 0:  # the child: a session of its own, the terminal its controlling tty
        try:
            fcntl.ioctl(0, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))  # 100 columns for the bar
            os.execve(argv[0], argv, env)
        finally:
            os._exit(127)
    buf = bytearray()
    seen = 0
    try:
        deadline = time.monotonic() + 600
        while seen < total // 3:
            m = None
            while m is None or int(m.group(1)) <= seen:
                m = _read_until(fd, after, deadline, buf)
                assert m is not None, f"no progress shown: {buf.decode(errors='replace')[-2000:]}"
                if int(m.group(1)) <= seen:
                    del buf[: m.end()]
            seen = int(m.group(1))
            del buf[: m.end()]
        assert seen < total, "the build finished before Ctrl-C"
        os.write(fd, b"\x03")  # the terminal's interrupt character: SIGINT to the foreground job
        _drain(fd, buf, timeout=300)
        _, status = os.waitpid(pid, 0)
    finally:
        os.close(fd)
        try:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        except (ProcessLookupError, ChildProcessError):
            pass
    return os.waitstatus_to_exitcode(status), buf.decode(errors="replace"), seen


def _relsearch() -> str:
    script = Path(sys.executable).parent / "relsearch"
    if not script.exists():
        pytest.skip("the relsearch console script is not installed beside this Python")
    return str(script)


def test_ctrl_c_in_a_terminal_keeps_the_finished_images(tmp_path):
    col, idx = tmp_path / "photos", tmp_path / "idx"
    photos = _photographs(col, 40)
    env = _env(tmp_path, RELSEARCH_COMMIT_SECONDS="0.3")
    argv = [_relsearch(), "build-index", str(col), "--index", str(idx), "--batch-size", "4", "--workers", "1"]
    code, shown, seen = _run_in_terminal_and_press_ctrl_c(argv, env, re.compile(rb"(\d+)/40\b"), 40)
    assert code == 130, shown[-2000:]
    m = re.search(r"interrupted: (\d+) images saved; run the same command to continue", shown)
    assert m, shown[-2000:]
    saved = int(m.group(1))
    assert seen <= saved < 40  # every image the bar counted is saved (it stops after the batch in hand)
    assert "Traceback" not in shown

    again = subprocess.run([*argv[:-4], "--json"], env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr
    report = json.loads(again.stdout)
    assert report["embedded"] == 40 - saved  # nothing embedded twice
    assert report["added"] == 40 and report["failed"] == [] and report["generation"] == 1

    # the index answers: a half-size copy of one photograph (not in the collection) finds it
    probe = tmp_path / "probe.jpg"
    with Image.open(photos[3]) as im:
        im.draft("RGB", (800, 800))
        im = im.convert("RGB")
        im.resize((im.width // 2, im.height // 2)).save(probe, quality=80)
    q = subprocess.run([argv[0], "query", str(probe), "--index", str(idx), "--json"], env=env,
                       capture_output=True, text=True, timeout=600)
    assert q.returncode == 0, q.stderr
    hits = json.loads(q.stdout)["results"]
    assert hits["imagenet"][0]["path"] == str(photos[3])
    v = subprocess.run([argv[0], "verify", "--index", str(idx), "--json"], env=env, capture_output=True,
                       text=True, timeout=600)
    assert v.returncode == 0 and json.loads(v.stdout)["consistent"], v.stdout + v.stderr


def _slow_build(col: Path, idx: Path, env: dict[str, str], *extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-c", _SLOW_CLI, "build-index", str(col), "--index", str(idx),
                             "--encoders", "slowcolor", "--batch-size", "2", "--workers", "1", *extra],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_embedded(proc: subprocess.Popen[str], n: int) -> tuple[int, list[str]]:
    """Read the child's stderr until it has embedded at least ``n`` images; returns that count."""
    lines: list[str] = []
    assert proc.stderr is not None
    for line in proc.stderr:
        lines.append(line)
        m = re.match(r"embedded (\d+)", line)
        if m and int(m.group(1)) >= n:
            return int(m.group(1)), lines
    raise AssertionError(f"the build ended before embedding {n} images: {''.join(lines)[-2000:]}")


def _resume(col: Path, idx: Path, env: dict[str, str]) -> dict:
    proc = _slow_build(col, idx, env, "--json")
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err
    return json.loads(out)


def test_sigterm_commits_what_is_embedded_and_exits_143(tmp_path):
    col, idx = tmp_path / "col", tmp_path / "idx"
    make_collection(col, 40)
    env = _env(tmp_path, RELSEARCH_COMMIT_SECONDS="1000")  # no commit by time or count before the signal
    proc = _slow_build(col, idx, env)
    seen, _ = _wait_embedded(proc, 14)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 143, err
    m = re.search(r"interrupted: (\d+) images saved; run the same command to continue", err)
    assert m, err
    saved = int(m.group(1))
    assert seen <= saved < 40
    report = _resume(col, idx, env)
    assert report["embedded"] == 40 - saved and report["added"] == 40


def test_sigkill_loses_at_most_the_last_interval(tmp_path):
    col, idx = tmp_path / "col", tmp_path / "idx"
    make_collection(col, 60)
    env = _env(tmp_path, RELSEARCH_COMMIT_SECONDS="0.2")  # about 5 images an interval
    proc = _slow_build(col, idx, env)
    seen, _ = _wait_embedded(proc, 30)
    proc.kill()
    proc.communicate(timeout=60)
    report = _resume(col, idx, env)
    lost = report["embedded"] - (60 - seen)
    # what was embedded in the last interval (plus the batch in hand), never the whole run
    assert 0 <= lost <= 14, (seen, report["embedded"])


def test_commits_by_time_as_well_as_by_count(tmp_path, monkeypatch):
    import engine_helpers

    col = tmp_path / "col"
    make_collection(col, 12)
    slow = engine_helpers.TinyColorEncoder.embed

    def embed(self, images):
        time.sleep(0.03 * len(images))
        return slow(self, images)

    monkeypatch.setattr(engine_helpers.TinyColorEncoder, "embed", embed)
    hits: list[str] = []
    real_point = build_mod.point
    monkeypatch.setattr(build_mod, "point", lambda name: (hits.append(name), real_point(name)))
    opts = dict(encoders="tinycolor", progress=False, workers=1, batch_size=2, commit_every=1000)
    build_index(col, tmp_path / "by-time", BuildOptions(commit_seconds=0.01, **opts))
    by_time = hits.count("chunk")
    hits.clear()
    monkeypatch.setenv(build_mod.COMMIT_SECONDS_ENV, "1000")
    build_index(col, tmp_path / "by-count", BuildOptions(**opts))
    assert by_time == 6 and hits.count("chunk") == 1  # a commit after each batch; else one at the end


def test_commit_interval_is_checked_before_anything_is_written(tmp_path, monkeypatch):
    col, idx = tmp_path / "col", tmp_path / "idx"
    make_collection(col, 3)
    monkeypatch.setenv(build_mod.COMMIT_SECONDS_ENV, "soon")
    with pytest.raises(RelsearchError, match="RELSEARCH_COMMIT_SECONDS must be a positive number"):
        build_index(col, idx, BuildOptions(encoders="tinycolor", progress=False))
    assert not idx.exists()
    with pytest.raises(ValueError, match="commit_seconds"):
        BuildOptions(commit_seconds=0)


@pytest.mark.parametrize(("signals", "saved"), [(1, 6), (2, 4)])
def test_a_signal_in_process_stops_after_the_batch_and_keeps_it(tmp_path, monkeypatch, signals, saved):
    """The library call: SIGINT mid-build raises BuildInterrupted (a KeyboardInterrupt) with
    the images saved, the previous handler is back afterwards, and the rerun finishes. One
    signal lets the batch in hand finish; a second stops at once, the batches before it kept."""
    import engine_helpers

    col, idx = tmp_path / "col", tmp_path / "idx"
    make_collection(col, 20)
    slow = engine_helpers.TinyColorEncoder.embed
    calls = {"n": 0}

    def embed(self, images):
        calls["n"] += 1
        if calls["n"] == 3:
            for _ in range(signals):
                os.kill(os.getpid(), signal.SIGINT)  # arrives while this batch is being embedded
        return slow(self, images)

    monkeypatch.setattr(engine_helpers.TinyColorEncoder, "embed", embed)
    before = signal.getsignal(signal.SIGINT)
    opts = BuildOptions(encoders="tinycolor", progress=False, workers=1, batch_size=2, commit_every=1000,
                        commit_seconds=1000)
    with pytest.raises(BuildInterrupted) as info:
        build_index(col, idx, opts)
    assert isinstance(info.value, KeyboardInterrupt) and info.value.exit_code == 130
    assert info.value.saved == saved  # the batches embedded (the third one only after a single signal)
    assert signal.getsignal(signal.SIGINT) is before
    monkeypatch.setattr(engine_helpers.TinyColorEncoder, "embed", slow)
    before_count = engine_helpers.TinyColorEncoder.images_embedded
    rep = build_index(col, idx, opts)
    assert rep.embedded == 20 - saved and engine_helpers.TinyColorEncoder.images_embedded - before_count == 20 - saved
    assert rep.added == 20 and rep.generation == 1
