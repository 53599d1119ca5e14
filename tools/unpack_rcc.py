"""Unpack the pictures of Qt resource bundles (``.rcc``) into a folder.

Some Debian packages (gcompris-qt-data) keep their photographs inside compiled Qt resource
bundles instead of plain files; ``benchmarks/realphoto/labels_train_extra.jsonl`` names those
as ``<bundle name>/<path inside the bundle>`` under the folder this writes.

    python tools/unpack_rcc.py OUT BUNDLE.rcc [BUNDLE.rcc ...]

A bundle is a header (``qres``, format version, offsets of the tree, the data and the names),
a tree of fixed-size nodes (directories list their children; files point at their data) and
the file data, each optionally zlib- or zstd-compressed.
"""

from __future__ import annotations

import shutil
import struct
import subprocess
import sys
import zlib
from pathlib import Path

PICTURES = (".jpg", ".jpeg", ".png", ".webp")
_DIRECTORY, _ZLIB, _ZSTD = 0x02, 0x01, 0x04


class Bundle:
    def __init__(self, data: bytes) -> None:
        if data[:4] != b"qres":
            raise ValueError("not a Qt resource bundle (no 'qres' header)")
        self.data = data
        self.version, self.tree, self.payload, self.names = struct.unpack(">IIII", data[4:20])
        self.node_size = 22 if self.version >= 2 else 14

    def name(self, offset: int) -> str:
        at = self.names + offset
        (length,) = struct.unpack(">H", self.data[at:at + 2])
        return self.data[at + 6:at + 6 + 2 * length].decode("utf-16-be")  # after length and hash

    def files(self, node: int = 0, prefix: str = ""):
        """(path inside the bundle, bytes) of every file under ``node``."""
        at = self.tree + node * self.node_size
        name_offset, flags = struct.unpack(">IH", self.data[at:at + 6])
        path = f"{prefix}/{self.name(name_offset)}" if node else ""
        if flags & _DIRECTORY:
            count, first = struct.unpack(">II", self.data[at + 6:at + 14])
            for child in range(first, first + count):
                yield from self.files(child, path)
            return
        (offset,) = struct.unpack(">I", self.data[at + 10:at + 14])
        start = self.payload + offset
        (size,) = struct.unpack(">I", self.data[start:start + 4])
        yield path.lstrip("/"), lambda: _decompress(self.data[start + 4:start + 4 + size], flags)


def _decompress(blob: bytes, flags: int) -> bytes:
    if flags & _ZLIB:
        return zlib.decompress(blob[4:])  # after qCompress's 4-byte length
    if flags & _ZSTD:
        if shutil.which("zstd") is None:
            raise RuntimeError("a zstd-compressed entry needs the zstd program")
        return subprocess.run(["zstd", "-dc"], input=blob, capture_output=True, check=True).stdout
    return blob


def unpack(bundle_path: Path, out: Path) -> int:
    bundle = Bundle(bundle_path.read_bytes())
    written = 0
    for inner, read in bundle.files():
        if not inner.lower().endswith(PICTURES):
            continue
        target = out / bundle_path.stem / inner
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(read())
        written += 1
    return written


def main(argv: list[str]) -> int:
    if len(argv) < 2:
        print(__doc__.strip().splitlines()[0], "\nusage: unpack_rcc.py OUT BUNDLE.rcc [...]", file=sys.stderr)
        return 2
    out = Path(argv[0])
    for name in argv[1:]:
        try:
            count = unpack(Path(name), out)
        except (OSError, ValueError, RuntimeError, struct.error, zlib.error) as exc:
            print(f"error: {name}: {exc}", file=sys.stderr)
            return 2
        print(f"{name}: {count} pictures")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
