"""Unit tests of bench/plot.py: the hand-written PNG is valid (signature, IHDR, CRCs, the
pixels round-trip through zlib), and the timeline draws what it is given."""

from __future__ import annotations

import struct
import zlib

import plot
import pytest


def chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    """The chunks of a PNG, each CRC checked with zlib."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    found, at = [], 8
    while at < len(data):
        (length,) = struct.unpack(">I", data[at : at + 4])
        kind, body = data[at + 4 : at + 8], data[at + 8 : at + 8 + length]
        (crc,) = struct.unpack(">I", data[at + 8 + length : at + 12 + length])
        assert crc == zlib.crc32(kind + body), f"bad CRC in {kind!r}"
        found.append((kind, body))
        at += 12 + length
    assert at == len(data)
    return found


def decode(data: bytes) -> tuple[int, int, bytes]:
    """Width, height and RGB pixels of a PNG that png_bytes wrote (filter 0 on each row)."""
    parts = chunks(data)
    kinds = [kind for kind, _ in parts]
    assert kinds[0] == b"IHDR" and kinds[-1] == b"IEND" and b"IDAT" in kinds
    width, height, depth, color, compression, filtering, interlace = struct.unpack(
        ">IIBBBBB", parts[0][1]
    )
    assert (depth, color, compression, filtering, interlace) == (8, 2, 0, 0, 0)
    raw = zlib.decompress(b"".join(body for kind, body in parts if kind == b"IDAT"))
    stride = 1 + width * 3
    assert len(raw) == height * stride
    assert all(raw[y * stride] == 0 for y in range(height))
    return width, height, b"".join(raw[y * stride + 1 : (y + 1) * stride] for y in range(height))


def test_png_bytes_round_trip():
    rgb = bytes(i * 7 % 256 for i in range(3 * 7 * 5))
    assert decode(plot.png_bytes(7, 5, rgb)) == (7, 5, rgb)


@pytest.mark.parametrize(
    ("width", "height", "size"),
    [(0, 1, 0), (2, 2, 11), (1, 0, 0)],
    ids=["no-width", "short", "no-height"],
)
def test_png_bytes_refuses_bad_sizes(width, height, size):
    with pytest.raises(ValueError):
        plot.png_bytes(width, height, bytes(size))


def test_canvas_rect_line_text_clip():
    canvas = plot.Canvas(20, 10)
    canvas.rect(-5, -5, 3, 2, plot.BLACK)  # clipped to the corner
    assert canvas.get(0, 0) == plot.BLACK and canvas.get(2, 1) == plot.BLACK
    assert canvas.get(3, 1) == plot.WHITE and canvas.get(2, 2) == plot.WHITE
    canvas.line(0, 9, 19, 9, plot.FAILED)
    assert all(canvas.get(x, 9) == plot.FAILED for x in range(20))
    canvas.line(5, 0, 5, 30, plot.OK_LINE)  # runs off the bottom without raising
    assert canvas.get(5, 8) == plot.OK_LINE
    before = bytes(canvas.pixels)
    canvas.text(12, 1, "1")
    assert bytes(canvas.pixels) != before
    assert canvas.get(14, 1) == plot.BLACK  # the top of the "1" (0x04: the middle column)
    assert decode(canvas.png())[:2] == (20, 10)


def test_font_glyphs_fit_five_by_seven():
    for char, rows in plot.FONT.items():
        assert len(rows) == 7, char
        assert all(0 <= row < 32 for row in rows), char
    assert plot.text_width("AB") == 11
    assert plot.text_width("AB", scale=2) == 22
    assert plot.text_width("") == 0


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (0, 1.0),
        (-3, 1.0),
        (0.3, 0.5),
        (1, 1.0),
        (1.2, 2.0),
        (3, 5.0),
        (7, 10.0),
        (50, 50.0),
        (51, 100.0),
        (180, 200.0),
    ],
)
def test_nice_ceiling(value, expected):
    assert plot.nice_ceiling(value) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("span", "expected"),
    [(10, 1.0), (60, 5.0), (200, 20.0), (1000, 120.0), (7200, 600.0), (20000, 1800.0)],
)
def test_tick_step(span, expected):
    assert plot.tick_step(span) == expected


def test_timeline_png_draws_bands_and_data():
    buckets = [
        {
            "second": i,
            "ok": 50,
            "failed": 2 if i == 7 else 0,
            "client_errors": 0,
            "p99_ms": None if i == 3 else 5.0,
        }
        for i in range(20)
    ]
    windows = [(1.0, 2.0, "floor", 1), (2.0, 9.0, "deploy_new", 1), (9.0, 12.0, "rollback", 1)]
    data = plot.timeline_png(buckets, windows, "test run", width=600)
    width, height, rgb = decode(data)
    assert width == 600 and height > 300
    colors = {tuple(rgb[i : i + 3]) for i in range(0, len(rgb), 3)}
    for expected in (
        plot.OPERATIONS["deploy_new"][0],
        plot.OPERATIONS["rollback"][0],
        plot.OK_LINE,
        plot.FAILED,
        plot.LATENCY,
    ):
        assert expected in colors


def test_timeline_png_empty_run():
    width, height, _ = decode(plot.timeline_png([], [], "nothing"))
    assert (width, height) == (1200, 110 + 3 * 170 + 2 * 28 + 36)
