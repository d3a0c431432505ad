"""A PNG timeline of a benchmark run, drawn with the standard library only.

Three panels share the time axis: requests per second (ok), errors per second
(failed requests, and the load generator's own client errors), and the p99 latency
of each second. Every timed command is a tinted band across all three, labelled
above the panels with its operation's letter and round (D3: deploy new, round 3).

The PNG is written by hand (zlib for IDAT, struct for the chunks, zlib.crc32 for the
CRCs); lines are Bresenham, text is a 5x7 bitmap font, upper case.
"""

from __future__ import annotations

import math
import struct
import zlib
from collections.abc import Sequence
from typing import Any

Color = tuple[int, int, int]

WHITE: Color = (255, 255, 255)
BLACK: Color = (0, 0, 0)
GREY: Color = (150, 150, 150)
LIGHT: Color = (225, 225, 225)
OK_LINE: Color = (30, 70, 160)
FAILED: Color = (210, 30, 30)
CLIENT: Color = (140, 60, 170)
LATENCY: Color = (20, 120, 60)

# Per operation: the band's tint, the letter of its labels, the legend's name.
OPERATIONS: dict[str, tuple[Color, str, str]] = {
    "floor": ((215, 215, 215), "F", "FLOOR (PING)"),
    "deploy_new": ((190, 210, 245), "D", "DEPLOY NEW"),
    "deploy_nochange": ((200, 235, 200), "N", "DEPLOY NO-CHANGE"),
    "rollback": ((250, 215, 175), "R", "ROLLBACK"),
}
OTHER: tuple[Color, str, str] = ((235, 235, 200), "?", "OTHER")

# 5x7 glyphs, one int per row, bit 4 the leftmost pixel (the HD44780 character shapes).
FONT: dict[str, tuple[int, ...]] = {
    " ": (0, 0, 0, 0, 0, 0, 0),
    "0": (0x0E, 0x11, 0x13, 0x15, 0x19, 0x11, 0x0E),
    "1": (0x04, 0x0C, 0x04, 0x04, 0x04, 0x04, 0x0E),
    "2": (0x0E, 0x11, 0x01, 0x02, 0x04, 0x08, 0x1F),
    "3": (0x1F, 0x02, 0x04, 0x02, 0x01, 0x11, 0x0E),
    "4": (0x02, 0x06, 0x0A, 0x12, 0x1F, 0x02, 0x02),
    "5": (0x1F, 0x10, 0x1E, 0x01, 0x01, 0x11, 0x0E),
    "6": (0x06, 0x08, 0x10, 0x1E, 0x11, 0x11, 0x0E),
    "7": (0x1F, 0x01, 0x02, 0x04, 0x08, 0x08, 0x08),
    "8": (0x0E, 0x11, 0x11, 0x0E, 0x11, 0x11, 0x0E),
    "9": (0x0E, 0x11, 0x11, 0x0F, 0x01, 0x02, 0x0C),
    "A": (0x0E, 0x11, 0x11, 0x11, 0x1F, 0x11, 0x11),
    "B": (0x1E, 0x11, 0x11, 0x1E, 0x11, 0x11, 0x1E),
    "C": (0x0E, 0x11, 0x10, 0x10, 0x10, 0x11, 0x0E),
    "D": (0x1C, 0x12, 0x11, 0x11, 0x11, 0x12, 0x1C),
    "E": (0x1F, 0x10, 0x10, 0x1E, 0x10, 0x10, 0x1F),
    "F": (0x1F, 0x10, 0x10, 0x1E, 0x10, 0x10, 0x10),
    "G": (0x0E, 0x11, 0x10, 0x17, 0x11, 0x11, 0x0F),
    "H": (0x11, 0x11, 0x11, 0x1F, 0x11, 0x11, 0x11),
    "I": (0x0E, 0x04, 0x04, 0x04, 0x04, 0x04, 0x0E),
    "J": (0x07, 0x02, 0x02, 0x02, 0x02, 0x12, 0x0C),
    "K": (0x11, 0x12, 0x14, 0x18, 0x14, 0x12, 0x11),
    "L": (0x10, 0x10, 0x10, 0x10, 0x10, 0x10, 0x1F),
    "M": (0x11, 0x1B, 0x15, 0x15, 0x11, 0x11, 0x11),
    "N": (0x11, 0x11, 0x19, 0x15, 0x13, 0x11, 0x11),
    "O": (0x0E, 0x11, 0x11, 0x11, 0x11, 0x11, 0x0E),
    "P": (0x1E, 0x11, 0x11, 0x1E, 0x10, 0x10, 0x10),
    "Q": (0x0E, 0x11, 0x11, 0x11, 0x15, 0x12, 0x0D),
    "R": (0x1E, 0x11, 0x11, 0x1E, 0x14, 0x12, 0x11),
    "S": (0x0F, 0x10, 0x10, 0x0E, 0x01, 0x01, 0x1E),
    "T": (0x1F, 0x04, 0x04, 0x04, 0x04, 0x04, 0x04),
    "U": (0x11, 0x11, 0x11, 0x11, 0x11, 0x11, 0x0E),
    "V": (0x11, 0x11, 0x11, 0x11, 0x11, 0x0A, 0x04),
    "W": (0x11, 0x11, 0x11, 0x15, 0x15, 0x15, 0x0A),
    "X": (0x11, 0x11, 0x0A, 0x04, 0x0A, 0x11, 0x11),
    "Y": (0x11, 0x11, 0x11, 0x0A, 0x04, 0x04, 0x04),
    "Z": (0x1F, 0x01, 0x02, 0x04, 0x08, 0x10, 0x1F),
    ".": (0, 0, 0, 0, 0, 0x0C, 0x0C),
    ",": (0, 0, 0, 0, 0x0C, 0x04, 0x08),
    ":": (0, 0x0C, 0x0C, 0, 0x0C, 0x0C, 0),
    "-": (0, 0, 0, 0x1F, 0, 0, 0),
    "+": (0, 0x04, 0x04, 0x1F, 0x04, 0x04, 0),
    "=": (0, 0, 0x1F, 0, 0x1F, 0, 0),
    "/": (0, 0x01, 0x02, 0x04, 0x08, 0x10, 0),
    "(": (0x02, 0x04, 0x08, 0x08, 0x08, 0x04, 0x02),
    ")": (0x08, 0x04, 0x02, 0x02, 0x02, 0x04, 0x08),
    "%": (0x18, 0x19, 0x02, 0x04, 0x08, 0x13, 0x03),
    "_": (0, 0, 0, 0, 0, 0, 0x1F),
    "?": (0x0E, 0x11, 0x01, 0x02, 0x04, 0, 0x04),
}
GLYPH_W, GLYPH_H = 5, 7

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_bytes(width: int, height: int, rgb: bytes) -> bytes:
    """An 8-bit RGB PNG of `rgb` (rows top to bottom, 3 bytes a pixel), no filtering."""
    stride = width * 3
    if width < 1 or height < 1 or len(rgb) != stride * height:
        raise ValueError(f"{len(rgb)} bytes is not a {width}x{height} RGB image")
    raw = b"".join(b"\x00" + rgb[y * stride : (y + 1) * stride] for y in range(height))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        PNG_SIGNATURE
        + _chunk(b"IHDR", header)
        + _chunk(b"IDAT", zlib.compress(raw, 9))
        + _chunk(b"IEND", b"")
    )


def text_width(text: str, scale: int = 1) -> int:
    return max(0, len(text) * (GLYPH_W + 1) - 1) * scale


class Canvas:
    """An RGB raster with the few drawing operations a timeline needs; clips silently."""

    def __init__(self, width: int, height: int, background: Color = WHITE) -> None:
        self.width = width
        self.height = height
        self.pixels = bytearray(bytes(background) * (width * height))

    def set(self, x: int, y: int, color: Color) -> None:
        if 0 <= x < self.width and 0 <= y < self.height:
            i = (y * self.width + x) * 3
            self.pixels[i : i + 3] = bytes(color)

    def get(self, x: int, y: int) -> Color:
        i = (y * self.width + x) * 3
        return (self.pixels[i], self.pixels[i + 1], self.pixels[i + 2])

    def rect(self, x0: int, y0: int, x1: int, y1: int, color: Color) -> None:
        """Fill [x0, x1) x [y0, y1), one slice assignment per row."""
        x0, x1 = max(0, min(x0, x1)), min(self.width, max(x0, x1))
        y0, y1 = max(0, min(y0, y1)), min(self.height, max(y0, y1))
        if x0 >= x1:
            return
        row = bytes(color) * (x1 - x0)
        for y in range(y0, y1):
            start = (y * self.width + x0) * 3
            self.pixels[start : start + len(row)] = row

    def line(self, x0: int, y0: int, x1: int, y1: int, color: Color, width: int = 1) -> None:
        dx, dy = abs(x1 - x0), -abs(y1 - y0)
        sx, sy = (1 if x0 < x1 else -1), (1 if y0 < y1 else -1)
        error = dx + dy
        while True:
            for offset in range(width):
                self.set(x0, y0 + offset, color)
            if x0 == x1 and y0 == y1:
                return
            doubled = 2 * error
            if doubled >= dy:
                error += dy
                x0 += sx
            if doubled <= dx:
                error += dx
                y0 += sy

    def text(self, x: int, y: int, text: str, color: Color = BLACK, scale: int = 1) -> None:
        for char in text.upper():
            glyph = FONT.get(char, FONT["?"])
            for row, bits in enumerate(glyph):
                for col in range(GLYPH_W):
                    if bits & (0x10 >> col):
                        px, py = x + col * scale, y + row * scale
                        self.rect(px, py, px + scale, py + scale, color)
            x += (GLYPH_W + 1) * scale

    def png(self) -> bytes:
        return png_bytes(self.width, self.height, bytes(self.pixels))


def nice_ceiling(value: float) -> float:
    """The smallest of 1, 2, 5 times a power of ten that is at least `value` (1 for <= 0)."""
    if value <= 0:
        return 1.0
    power = 10 ** math.floor(math.log10(value))
    for step in (1, 2, 5, 10):
        if step * power >= value * (1 - 1e-9):
            return float(step * power)
    return 10.0 * power


def tick_step(span: float, most: int = 12) -> float:
    """A round step for an axis of `span` units that gives at most `most` ticks."""
    for step in (1, 2, 5, 10, 15, 20, 30, 60, 120, 300, 600, 900, 1800, 3600):
        if span / step <= most:
            return float(step)
    return nice_ceiling(span / most)


def number(value: float) -> str:
    if value >= 10 or value == int(value):
        return f"{value:.0f}"
    return f"{value:.1f}"


def timeline_png(
    buckets: Sequence[dict[str, Any]],
    windows: Sequence[tuple[float, float, str, int | None]],
    title: str,
    width: int = 1200,
) -> bytes:
    """The timeline of one run: `buckets` as load.timeline() makes them (one a second:
    ok, failed, client_errors, p99_ms), `windows` the commands as (start, end, operation,
    round) on the same clock."""
    left, right, top, bottom = 64, 16, 110, 36
    panel_h, gap = 170, 28
    panels = (
        ("REQUESTS/S (OK)", [b["ok"] for b in buckets], OK_LINE),
        ("ERRORS/S (RED FAILED, PURPLE CLIENT)", [b["failed"] for b in buckets], FAILED),
        ("P99 LATENCY MS, PER SECOND", [b.get("p99_ms") for b in buckets], LATENCY),
    )
    height = top + len(panels) * panel_h + (len(panels) - 1) * gap + bottom
    canvas = Canvas(width, height)
    plot_w = width - left - right
    seconds = max(1.0, float(len(buckets)), *(end for _, end, _, _ in windows))

    def px(t: float) -> int:
        return left + round(t / seconds * plot_w)

    canvas.text(left, 8, title, BLACK, 2)
    x = left
    for color, letter, name in OPERATIONS.values():
        canvas.rect(x, 34, x + 14, 44, color)
        label = f"{letter} = {name}"
        canvas.text(x + 18, 36, label)
        x += 18 + text_width(label) + 24

    # Labels above the bands, in two rows so that short neighbouring bands both get one.
    row_y = (62, 76)
    row_end = [-(10**9), -(10**9)]
    panel_tops = [top + i * (panel_h + gap) for i in range(len(panels))]
    for start, end, op, round_ in windows:
        color, letter, _ = OPERATIONS.get(op, OTHER)
        x0, x1 = px(start), max(px(end), px(start) + 1)
        for panel_top in panel_tops:
            canvas.rect(x0, panel_top, x1, panel_top + panel_h, color)
        label = f"{letter}{round_ or ''}"
        lx = (x0 + x1) // 2 - text_width(label) // 2
        for row, y in enumerate(row_y):
            if lx > row_end[row] + 3:
                canvas.text(lx, y, label, BLACK)
                canvas.line((x0 + x1) // 2, y + 9, (x0 + x1) // 2, top - 15, GREY)
                row_end[row] = lx + text_width(label)
                break

    step = tick_step(seconds)
    for (name, values, color), panel_top in zip(panels, panel_tops, strict=True):
        present = [v for v in values if v is not None]
        if name.startswith("ERRORS"):
            present += [b["client_errors"] for b in buckets]
        ymax = nice_ceiling(max(present, default=0))
        bottom_y = panel_top + panel_h

        def py(v: float, ymax: float = ymax, bottom_y: int = bottom_y) -> int:
            return bottom_y - round(v / ymax * (panel_h - 1))

        for fraction in (0.0, 0.5, 1.0):
            y = py(ymax * fraction)
            canvas.line(left, y, left + plot_w, y, LIGHT)
            label = number(ymax * fraction)
            canvas.text(left - 6 - text_width(label), y - 3, label, BLACK)
        tick = 0.0
        while tick <= seconds:
            canvas.line(px(tick), bottom_y, px(tick), bottom_y + 3, BLACK)
            tick += step
        canvas.text(left, panel_top - 11, name, BLACK)
        if name.startswith("ERRORS"):
            bar = max(1, round(plot_w / seconds) - 1)
            for i, b in enumerate(buckets):
                if b["client_errors"]:
                    canvas.rect(px(i), py(b["client_errors"]), px(i) + bar, bottom_y, CLIENT)
                if b["failed"]:
                    canvas.rect(px(i), py(b["failed"]), px(i) + bar, bottom_y, FAILED)
        else:
            previous: tuple[int, int] | None = None
            for i, v in enumerate(values):
                if v is None:
                    previous = None
                    continue
                point = (px(i + 0.5), py(v))
                if previous is not None:
                    canvas.line(*previous, *point, color, width=2)
                else:
                    canvas.rect(point[0], point[1], point[0] + 2, point[1] + 2, color)
                previous = point
        canvas.line(left, panel_top, left, bottom_y, BLACK)
        canvas.line(left, bottom_y, left + plot_w, bottom_y, BLACK)

    last_bottom = panel_tops[-1] + panel_h
    tick = 0.0
    while tick <= seconds:
        label = number(tick)
        canvas.text(px(tick) - text_width(label) // 2, last_bottom + 8, label, BLACK)
        tick += step
    caption = "SECONDS SINCE THE LOAD STARTED"
    canvas.text(left + plot_w - text_width(caption), last_bottom + 22, caption, GREY)
    return canvas.png()
