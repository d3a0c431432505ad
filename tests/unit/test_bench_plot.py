"""Unit tests of bench/plot.py: the real matplotlib drawing, on small synthetic runs.

The PNG is read back with matplotlib.image; its size is what was asked, failed
requests are drawn (in the figure and as pixels of the failure colour), and input of
the wrong shape is refused with a message that says what is wrong.
"""

from __future__ import annotations

import io
import json
import struct

import numpy as np
import plot
import pytest
from matplotlib import image
from matplotlib.colors import to_rgb

RELEASES = ("20261202T100000-aaaa", "20261202T100100-bbbb")


def synthetic_buckets(seconds: int = 30, failed_at: tuple[int, ...] = (12,)) -> list[dict]:
    """One bucket a second as load.timeline() makes them; the release flips at 15 s."""
    buckets = []
    for i in range(seconds):
        ok = 50
        buckets.append(
            {
                "second": i,
                "ok": ok,
                "failed": 3 if i in failed_at else 0,
                "client_errors": 1 if i == 20 else 0,
                "releases": {RELEASES[i >= 15]: ok},
                "p99_ms": None if i == 5 else 4.0 + i % 3,
            }
        )
    return buckets


WINDOWS = [
    (2.0, 3.5, "floor", 1),
    (4.0, 11.0, "deploy_new", 1),
    (11.5, 14.0, "deploy_nochange", 1),
    (15.0, 17.0, "rollback", 1),
]


def read_png(data: bytes) -> np.ndarray:
    """The pixels of a PNG (float RGBA, rows top to bottom), after checking its header."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert data[12:16] == b"IHDR"
    return image.imread(io.BytesIO(data), format="png")


def ihdr_size(data: bytes) -> tuple[int, int]:
    return struct.unpack(">II", data[16:24])


def has_color(pixels: np.ndarray, color: str, tolerance: float = 0.02) -> bool:
    rgb = np.array(to_rgb(color))
    return bool((np.abs(pixels[..., :3] - rgb) < tolerance).all(axis=-1).any())


def inside_requests_panel(drawn: plot.Timeline, pixels: np.ndarray) -> np.ndarray:
    """The pixels of the upper panel's plotting area (not its legend), with the failure
    marks just under its top edge."""
    box = drawn.figure.axes[0].get_window_extent()  # pixels, origin bottom left
    height = pixels.shape[0]
    return pixels[height - round(box.y1) : height - round(box.y0), round(box.x0) : round(box.x1)]


def test_timeline_png_is_a_png_of_the_asked_size():
    data = plot.timeline_png(synthetic_buckets(), WINDOWS, "test run", width=800, height=500)
    assert ihdr_size(data) == (800, 500)
    pixels = read_png(data)
    assert pixels.shape[:2] == (500, 800)
    assert has_color(pixels, plot.LATENCY)
    assert has_color(pixels, plot.OPERATIONS["deploy_nochange"][0])  # a band, in the lower panel


def test_timeline_png_default_size():
    assert ihdr_size(plot.timeline_png(synthetic_buckets(), WINDOWS, "t")) == (
        plot.WIDTH,
        plot.HEIGHT,
    )


def test_failed_requests_are_drawn():
    drawn = plot.draw_timeline(synthetic_buckets(failed_at=(7, 12)), WINDOWS, "failures")
    assert drawn.failed_seconds == [7, 12]
    assert drawn.failed_total == 6
    assert drawn.releases == list(RELEASES)
    assert drawn.bands == len(WINDOWS)
    requests_ax = drawn.figure.axes[0]
    labels = [c.get_label() for c in requests_ax.containers]
    failed_bars = requests_ax.containers[labels.index("failed (6)")]
    heights = [bar.get_height() for bar in failed_bars]
    assert [i for i, h in enumerate(heights) if h] == [7, 12]
    legend = [t.get_text() for t in requests_ax.get_legend().get_texts()]
    assert "failed (6)" in legend and RELEASES[0] in legend

    data = plot.timeline_png(synthetic_buckets(failed_at=(7, 12)), WINDOWS, "failures")
    assert has_color(inside_requests_panel(drawn, read_png(data)), plot.FAILED)


def test_no_failure_no_failure_colour_in_the_panel():
    buckets = synthetic_buckets(failed_at=())
    drawn = plot.draw_timeline(buckets, WINDOWS, "clean")
    assert drawn.failed_seconds == [] and drawn.failed_total == 0
    pixels = read_png(plot.timeline_png(buckets, WINDOWS, "clean"))
    assert not has_color(inside_requests_panel(drawn, pixels), plot.FAILED)
    assert has_color(pixels, plot.FAILED)  # the legend still says "failed (0)"


def test_empty_run_still_draws():
    data = plot.timeline_png([], [], "nothing")
    assert read_png(data).shape[:2] == (plot.HEIGHT, plot.WIDTH)


@pytest.mark.parametrize(
    ("buckets", "windows", "size", "message"),
    [
        ([{"ok": -1, "failed": 0, "client_errors": 0}], [], {}, "'ok' must be a count"),
        ([{"ok": 1, "failed": "x", "client_errors": 0}], [], {}, "'failed' must be a count"),
        (["not a bucket"], [], {}, "bucket 0 is not an object"),
        ([{"ok": 1, "failed": 0, "client_errors": 0, "p99_ms": "fast"}], [], {}, "p99_ms"),
        ([{"ok": 1, "failed": 0, "client_errors": 0, "releases": {"a": None}}], [], {}, "'a'"),
        ([], [(5.0, 2.0, "rollback", 1)], {}, "start <= end"),
        ([], [(1.0, 2.0)], {}, "is not (start, end, operation, round)"),
        ([], [], {"width": 10}, "at least"),
    ],
    ids=["negative", "not-a-count", "not-a-dict", "p99", "release", "window-order",
         "window-shape", "too-small"],
)  # fmt: skip
def test_bad_input_is_refused_clearly(buckets, windows, size, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        plot.timeline_png(buckets, windows, "bad", **size)


def bench_json(tmp_path, runs):
    report = {
        "machine": {"date": "2026-12-02T10:00:00+00:00", "git_commit": "7b604c8abcdef"},
        "settings": {"rounds": 1},
        "runs": runs,
    }
    path = tmp_path / "bench.json"
    path.write_text(json.dumps(report))
    return path


def test_main_redraws_from_bench_json(tmp_path, capsys):
    commands = [
        {"op": op, "round": r, "window": {"start": start, "end": end}}
        for start, end, op, r in WINDOWS
    ]
    run = {
        "machines": 2,
        "commands": commands,
        "load": {"clients": 4, "rate": 50.0, "timeline": synthetic_buckets()},
    }
    path = bench_json(tmp_path, [run, {"machines": 4, "commands": []}])  # the 2nd never ran
    assert plot.main([str(path), "--out", str(tmp_path / "png"), "--width", "640"]) == 0
    written = tmp_path / "png" / "timeline-k2.png"
    assert capsys.readouterr().out.split() == [str(written)]
    assert ihdr_size(written.read_bytes()) == (640, plot.HEIGHT)
    [(k, _, windows, title)] = plot.report_timelines(json.loads(path.read_text()))
    assert k == 2 and windows == WINDOWS
    assert "2026-12-02 10:00:00 UTC" in title and "commit 7b604c8" in title


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{", "Expecting"),
        ('{"runs": 3}', "no list of 'runs'"),
        ('{"runs": []}', "no run in this bench.json has a timeline"),
        ('{"runs": [{"load": {"clients": 1}}]}', "has no 'timeline' list"),
    ],
)
def test_main_refuses_what_is_not_a_bench_json(tmp_path, capsys, content, message):
    path = tmp_path / "bench.json"
    path.write_text(content)
    with pytest.raises(SystemExit) as exit_:
        plot.main([str(path)])
    assert exit_.value.code == 2
    assert message in capsys.readouterr().err
    assert not list(tmp_path.glob("*.png"))


def band_labels(drawn: plot.Timeline) -> dict[str, tuple[float, float]]:
    """The labels above the bands: text -> (x in seconds, y in axes fractions)."""
    return {t.get_text(): t.get_position() for t in drawn.figure.axes[0].texts}


def test_each_window_is_a_band_labelled_with_its_operation_and_round():
    drawn = plot.draw_timeline(synthetic_buckets(), WINDOWS, "bands")
    requests_ax, latency_ax = drawn.figure.axes[:2]
    for ax in (requests_ax, latency_ax):
        spans = sorted(
            (p.get_x(), p.get_x() + p.get_width())
            for p in ax.patches
            if p.get_facecolor()[:3] in {to_rgb(c) for c, _, _ in plot.OPERATIONS.values()}
        )
        assert spans == [(start, end) for start, end, _, _ in WINDOWS]
    labels = band_labels(drawn)
    expected = {
        f"{plot.OPERATIONS[op][1]}{round_}": (start + end) / 2 for start, end, op, round_ in WINDOWS
    }
    assert {text: x for text, (x, _) in labels.items()} == expected
    assert all(y > 1 for _, y in labels.values())  # above the panel, not over the bars


def test_labels_of_close_windows_go_on_a_second_row():
    windows = [(10.0, 10.2, "floor", 1), (10.3, 10.5, "rollback", 1), (20.0, 21.0, "floor", 2)]
    labels = band_labels(plot.draw_timeline(synthetic_buckets(), windows, "close"))
    assert set(labels) == {"F1", "R1", "F2"}
    assert labels["F1"][1] < labels["R1"][1]  # too close for one row
    assert labels["F2"][1] == labels["F1"][1]  # far enough: back on the first row


def test_axes_say_what_they_measure():
    drawn = plot.draw_timeline(synthetic_buckets(), WINDOWS, "the title")
    requests_ax, latency_ax = drawn.figure.axes[:2]
    assert drawn.figure.get_suptitle() == "the title"
    assert "seconds" in latency_ax.get_xlabel()
    assert requests_ax.get_ylabel() == "requests / s"
    assert "p99" in latency_ax.get_ylabel() and "(ms)" in latency_ax.get_ylabel()
    assert latency_ax.get_xlim() == (0, 30)  # the whole run, 30 one-second buckets
    operations = [t.get_text() for t in latency_ax.get_legend().get_texts()]
    assert operations == [f"{letter}  {name}" for _, letter, name in plot.OPERATIONS.values()]
    line = latency_ax.get_lines()[0]
    assert np.isnan(line.get_ydata()[5])  # no successful request that second: a gap
    assert line.get_ydata()[6] == pytest.approx(4.0)
