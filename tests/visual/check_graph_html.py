"""Render a `dagworker graph --html` page in headless Chromium and check the picture.

    .venv/bin/python tests/visual/check_graph_html.py [--keep DIR] [--html FILE]

Writes the page for a pipeline with one node in every state (or takes --html FILE, e.g. from
`dagworker graph --run RUN --html FILE`), screenshots it with Chromium (no network: the page
needs none), and checks that every state's fill colour shows up in the screenshot, which
proves the inline SVG was drawn. Exits 0 with "skipped" when no Chromium is installed.
The PNG is decoded here with zlib (no imaging library needed).
"""

from __future__ import annotations

import argparse
import re
import shutil
import struct
import subprocess
import sys
import tempfile
import zlib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from dagworker.graphview import state_colours, to_html  # noqa: E402
from tests.graph_sample import COUNTS, PIPELINE, STATES  # noqa: E402


def sample_page() -> str:
    return to_html(PIPELINE, STATES, COUNTS, run_id="sample-run", run_status="failed")


def chromium() -> str | None:
    return next((p for n in ("chromium", "chromium-browser") if (p := shutil.which(n))), None)


def screenshot(binary: str, page: Path, png: Path) -> None:
    with tempfile.TemporaryDirectory() as profile:
        cmd = [
            binary, "--headless", "--no-sandbox", "--disable-gpu",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            "--no-first-run", f"--user-data-dir={profile}", f"--screenshot={png}",
            "--window-size=1200,900", page.as_uri(),
        ]  # fmt: skip
        subprocess.run(cmd, check=True, capture_output=True, timeout=120)


def decode_png(data: bytes) -> tuple[int, int, list[bytes]]:
    """Width, height and unfiltered rows of an 8-bit RGB/RGBA PNG (what Chromium writes)."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    pos, idat, width = 8, b"", 0
    height = depth = colour = 0
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        if kind == b"IHDR":
            width, height, depth, colour = struct.unpack(">IIBB", body[:10])
        elif kind == b"IDAT":
            idat += body
        pos += 12 + length
    assert depth == 8 and colour in (2, 6), f"unexpected PNG format {depth}/{colour}"
    bpp = 3 if colour == 2 else 4
    raw, stride, rows = zlib.decompress(idat), width * bpp, []
    prev = bytearray(stride)
    for y in range(height):
        start = y * (stride + 1)
        kind, line = raw[start], bytearray(raw[start + 1 : start + 1 + stride])
        for i in range(stride):
            a = line[i - bpp] if i >= bpp else 0
            b, c = prev[i], prev[i - bpp] if i >= bpp else 0
            if kind == 1:
                line[i] = (line[i] + a) & 255
            elif kind == 2:
                line[i] = (line[i] + b) & 255
            elif kind == 3:
                line[i] = (line[i] + (a + b) // 2) & 255
            elif kind == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
        rows.append(bytes(line) if bpp == 3 else bytes(v for k, v in enumerate(line) if k % 4 < 3))
        prev = line
    return width, height, rows


def colour_counts(rows: list[bytes], wanted: dict[str, bytes]) -> dict[str, int]:
    counts = dict.fromkeys(wanted, 0)
    for row in rows:
        for name, rgb in wanted.items():
            counts[name] += sum(1 for i in range(0, len(row), 3) if row[i : i + 3] == rgb)
    return counts


def main() -> int:
    args = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    args.add_argument("--keep", type=Path, help="write page.html and page.png into this folder")
    args.add_argument("--html", type=Path, help="check this page instead of the sample")
    opts = args.parse_args()
    binary = chromium()
    if binary is None:
        print("skipped: no chromium on PATH (apt-get install chromium)")
        return 0
    if opts.keep is None:
        with tempfile.TemporaryDirectory(prefix="dagworker-graph-") as tmp:
            return check(binary, Path(tmp), opts.html)
    opts.keep.mkdir(parents=True, exist_ok=True)
    return check(binary, opts.keep, opts.html)


def check(binary: str, out: Path, html: Path | None) -> int:
    page, png = out / "page.html", out / "page.png"
    page.write_text(html.read_text() if html else sample_page(), encoding="utf-8")
    screenshot(binary, page, png)
    width, height, rows = decode_png(png.read_bytes())
    # the states drawn: the sample's, or those the given page declares on its node groups
    states = set(
        re.findall(r'class="node" data-slug="[^"]*" data-state="([^"]+)"', page.read_text())
    )
    wanted = {s: bytes.fromhex(state_colours(s)["fill"].lstrip("#")) for s in states}
    counts = colour_counts(rows, wanted)
    print(f"screenshot {png} ({width}x{height}); fill pixels per state: {counts}")
    missing = [s for s, n in counts.items() if n < 500]
    if missing:
        print(f"FAIL: no box drawn for {missing}")
        return 1
    print("ok: every state's box is drawn")
    return 0


if __name__ == "__main__":
    sys.exit(main())
