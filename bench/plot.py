"""The PNG timeline of a benchmark run, drawn with matplotlib (Agg, no display needed).

Two panels share one time axis, in seconds since the load started:

- requests per second, one stacked bar a second: the requests answered by each
  release in that release's colour, answers without a release field in grey, failed
  requests in red (hatched, and a red triangle above every second that has any), the
  load generator's own client errors in purple;
- the p99 latency of the successful requests of each second, in ms.

Every timed command is a tinted band across both panels, labelled above them with its
operation's letter and round (D3: deploy new, round 3). bench.py calls timeline_png()
with what it measured; `python bench/plot.py bench.json` draws the same pictures again
from the JSON that bench.py wrote.

matplotlib is a bench and test dependency only (pyproject.toml); no deploy needs it.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from matplotlib.transforms import blended_transform_factory

Window = tuple[float, float, str, int | None]

DPI = 100
WIDTH = 1200  # pixels
HEIGHT = 720
MIN_SIZE = 300  # below this the labels no longer fit

FAILED = "#d62728"
CLIENT = "#9467bd"
NO_RELEASE = "#b0b0b0"
LATENCY = "#2ca02c"
# Releases take these in order of first appearance; red and purple are left out
# (failures), and so is grey (answers without a release).
RELEASE_COLORS = (
    "#1f77b4",
    "#ff7f0e",
    "#17becf",
    "#8c564b",
    "#bcbd22",
    "#e377c2",
    "#393b79",
    "#637939",
    "#8c6d31",
    "#7b4173",
)

# Per operation: the band's tint, the letter of its labels, the legend's name.
OPERATIONS: dict[str, tuple[str, str, str]] = {
    "floor": ("#d9d9d9", "F", "floor (ping)"),
    "deploy_new": ("#c6dbef", "D", "deploy new"),
    "deploy_nochange": ("#c7e9c0", "N", "deploy no-change"),
    "rollback": ("#fdd0a2", "R", "rollback"),
    "deploy_deps": ("#dadaeb", "P", "deploy deps bumped"),
    "broken_exit": ("#fcbba1", "X", "broken: exits"),
    "broken_unhealthy": ("#fde0ef", "U", "broken: 500s"),
}
OTHER: tuple[str, str, str] = ("#f0f0c8", "?", "other")


@dataclass
class Timeline:
    """A drawn timeline: the figure, and what was put on it (for the tests)."""

    figure: Figure
    releases: list[str] = field(default_factory=list)
    failed_seconds: list[int] = field(default_factory=list)
    failed_total: int = 0
    bands: int = 0


def _count(bucket: dict[str, Any], key: str, index: int) -> int:
    value = bucket.get(key, 0)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"timeline bucket {index}: {key!r} must be a count, not {value!r}")
    return value


def _check(
    buckets: Sequence[dict[str, Any]], windows: Sequence[Window], width: int, height: int
) -> None:
    if width < MIN_SIZE or height < MIN_SIZE:
        raise ValueError(
            f"a timeline needs at least {MIN_SIZE}x{MIN_SIZE} pixels, not {width}x{height}"
        )
    for i, bucket in enumerate(buckets):
        if not isinstance(bucket, dict):
            raise ValueError(f"timeline bucket {i} is not an object: {bucket!r}")
        for key in ("ok", "failed", "client_errors"):
            _count(bucket, key, i)
        p99 = bucket.get("p99_ms")
        if p99 is not None and (isinstance(p99, bool) or not isinstance(p99, int | float)):
            raise ValueError(f"timeline bucket {i}: 'p99_ms' must be a number or null, not {p99!r}")
        releases = bucket.get("releases", {})
        if not isinstance(releases, dict):
            raise ValueError(f"timeline bucket {i}: 'releases' must be an object")
        for release in releases:
            _count(releases, release, i)
    for i, window in enumerate(windows):
        try:
            start, end, op, _round = window
        except (TypeError, ValueError):
            raise ValueError(
                f"window {i} is not (start, end, operation, round): {window!r}"
            ) from None
        if not all(isinstance(t, int | float) and math.isfinite(t) for t in (start, end)):
            raise ValueError(f"window {i}: start and end must be numbers: {window!r}")
        if end < start:
            raise ValueError(f"window {i}: needs start <= end: {window!r}")
        if not isinstance(op, str):
            raise ValueError(f"window {i}: the operation must be a name: {window!r}")


def _short(name: str, most: int = 28) -> str:
    return name if len(name) <= most else name[: most - 1] + "…"


def draw_timeline(
    buckets: Sequence[dict[str, Any]],
    windows: Sequence[Window],
    title: str,
    width: int = WIDTH,
    height: int = HEIGHT,
) -> Timeline:
    """The timeline of one run as a matplotlib figure: `buckets` as load.timeline()
    makes them (one a second: ok, failed, client_errors, p99_ms, releases), `windows`
    the commands as (start, end, operation, round) on the same clock. ValueError on
    input of another shape.

    A failed answer whose body still named a release (an HTTP error with a JSON body)
    is in both its release's bar and the red one: the buckets count releases apart."""
    _check(buckets, windows, width, height)
    figure = Figure(figsize=(width / DPI, height / DPI), dpi=DPI)
    FigureCanvasAgg(figure)
    requests_ax, latency_ax = figure.subplots(
        2, 1, sharex=True, gridspec_kw={"height_ratios": (3, 2), "hspace": 0.08}
    )
    figure.subplots_adjust(left=0.07, right=0.78, top=0.86, bottom=0.09)
    figure.suptitle(title, x=0.07, ha="left", fontsize=12, fontweight="bold")

    seconds = max(1.0, float(len(buckets)), *(end for _, end, _, _ in windows))
    x = [i + 0.5 for i in range(len(buckets))]
    drawn = Timeline(figure)

    # The operations' windows, behind everything else.
    for start, end, op, _round in windows:
        color = OPERATIONS.get(op, OTHER)[0]
        for ax in (requests_ax, latency_ax):
            ax.axvspan(start, end, color=color, linewidth=0, zorder=0)
        drawn.bands += 1

    # Requests per second, stacked: each release, no release, failed, client errors.
    for bucket in buckets:
        for release in bucket.get("releases", {}):
            if release not in drawn.releases:
                drawn.releases.append(release)
    bottom = [0] * len(buckets)

    def stack(values: list[int], label: str, **style: Any) -> None:
        requests_ax.bar(
            x, values, width=1.0, bottom=bottom, label=label, linewidth=0, zorder=2, **style
        )
        for i, value in enumerate(values):
            bottom[i] += value

    for n, release in enumerate(drawn.releases):
        counts = [b.get("releases", {}).get(release, 0) for b in buckets]
        color = RELEASE_COLORS[n % len(RELEASE_COLORS)]
        # See-through, so that the operations' bands show behind the bars.
        stack(counts, _short(release), color=color, alpha=0.75)
    unnamed = [max(0, b["ok"] - sum(b.get("releases", {}).values())) for b in buckets]
    if any(unnamed):
        stack(unnamed, "ok, no release field", color=NO_RELEASE, alpha=0.75)
    failed = [b["failed"] for b in buckets]
    drawn.failed_total = sum(failed)
    drawn.failed_seconds = [i for i, n in enumerate(failed) if n]
    stack(failed, f"failed ({drawn.failed_total})", color=FAILED, hatch="////", edgecolor="black")
    client = [b["client_errors"] for b in buckets]
    stack(client, f"client errors ({sum(client)})", color=CLIENT)
    if drawn.failed_seconds:
        # A failure or two among 50 answers is a sliver of bar; the marks show each one.
        top = blended_transform_factory(requests_ax.transData, requests_ax.transAxes)
        requests_ax.scatter(
            [x[i] for i in drawn.failed_seconds],
            [0.97] * len(drawn.failed_seconds),
            transform=top,
            marker="v",
            s=36,
            color=FAILED,
            edgecolor="black",
            linewidth=0.5,
            zorder=4,
            clip_on=False,
        )
    requests_ax.set_ylim(0, max(1, *bottom) * 1.15 if bottom else 1)
    requests_ax.set_ylabel("requests / s")

    # p99 latency; None (no successful request in that second) leaves a gap.
    p99 = [math.nan if b.get("p99_ms") is None else b["p99_ms"] for b in buckets]
    latency_ax.plot(x, p99, color=LATENCY, linewidth=1.5, marker=".", markersize=3, zorder=3)
    present = [v for v in p99 if not math.isnan(v)]
    latency_ax.set_ylim(0, max(1.0, *present) * 1.1 if present else 1.0)
    latency_ax.set_ylabel("p99 latency (ms)")
    latency_ax.set_xlabel("seconds since the load started")
    latency_ax.set_xlim(0, seconds)

    for ax in (requests_ax, latency_ax):
        ax.grid(axis="y", color="#e0e0e0", linewidth=0.8, zorder=1)
        ax.set_axisbelow(True)

    # Letter and round above each band, in two rows so that close neighbours both fit.
    above = blended_transform_factory(requests_ax.transData, requests_ax.transAxes)
    plot_px = width * (0.78 - 0.07)
    room = 28 / plot_px * seconds  # seconds that one label needs
    row_end = [-math.inf, -math.inf]
    for start, end, op, round_ in windows:
        letter = OPERATIONS.get(op, OTHER)[1]
        middle = (start + end) / 2
        for row, y in enumerate((1.02, 1.09)):
            if middle - row_end[row] >= room:
                requests_ax.text(
                    middle,
                    y,
                    f"{letter}{round_ or ''}",
                    transform=above,
                    ha="center",
                    va="bottom",
                    fontsize=8,
                )
                row_end[row] = middle
                break

    # Legends at the right: what the bars are, and what the bands are.
    requests_ax.legend(
        loc="upper left",
        bbox_to_anchor=(1.01, 1.0),
        fontsize=8,
        title="requests, by release",
        title_fontsize=9,
        frameon=False,
    )
    operations = [
        Patch(color=color, label=f"{letter}  {name}") for color, letter, name in OPERATIONS.values()
    ]
    if any(op not in OPERATIONS for _, _, op, _ in windows):
        operations.append(Patch(color=OTHER[0], label=f"{OTHER[1]}  {OTHER[2]}"))
    latency_ax.legend(
        handles=operations,
        loc="upper left",
        bbox_to_anchor=(1.01, 1.0),
        fontsize=8,
        title="operations (bands)",
        title_fontsize=9,
        frameon=False,
    )
    return drawn


def timeline_png(
    buckets: Sequence[dict[str, Any]],
    windows: Sequence[Window],
    title: str,
    width: int = WIDTH,
    height: int = HEIGHT,
) -> bytes:
    """The timeline of one run (see draw_timeline()) as a `width` x `height` PNG."""
    figure = draw_timeline(buckets, windows, title, width, height).figure
    out = io.BytesIO()
    figure.savefig(out, format="png", dpi=DPI)
    return out.getvalue()


def report_timelines(report: Any) -> list[tuple[int, list[dict[str, Any]], list[Window], str]]:
    """From a bench.json document: (machines, buckets, windows, title) for each fleet
    size that has a timeline. ValueError when the document is not one."""
    if not isinstance(report, dict) or not isinstance(report.get("runs"), list):
        raise ValueError("not a bench.json: no list of 'runs'")
    machine = report.get("machine") or {}
    settings = report.get("settings") or {}
    commit = str(machine.get("git_commit") or "")[:7]
    date = str(machine.get("date") or "").replace("T", " ").removesuffix("+00:00")
    found = []
    for n, run in enumerate(report["runs"]):
        if not isinstance(run, dict):
            raise ValueError(f"runs[{n}] is not an object")
        load = run.get("load")
        if not load:
            continue  # the run stopped before its load summary
        if not isinstance(load, dict) or not isinstance(load.get("timeline"), list):
            raise ValueError(f"runs[{n}].load has no 'timeline' list")
        try:
            windows = [
                (c["window"]["start"], c["window"]["end"], c["op"], c.get("round"))
                for c in run.get("commands", [])
            ]
        except (KeyError, TypeError):
            raise ValueError(f"runs[{n}].commands: each needs op and window start/end") from None
        k = run.get("machines")
        parts = [
            "flipback bench",
            f"K={k}",
            f"R={settings.get('rounds', '?')}",
            f"{load.get('clients', '?')} clients",
            f"{load.get('rate', '?')}/s",
            f"{date} UTC" if date else "",
            f"commit {commit}" if commit else "",
        ]
        found.append((k, load["timeline"], windows, "  ".join(p for p in parts if p)))
    if not found:
        raise ValueError("no run in this bench.json has a timeline")
    return found


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Draw timeline-k<K>.png again from the bench.json of a bench/run."
    )
    parser.add_argument("json", type=Path, help="the bench.json that bench/run wrote")
    parser.add_argument("--out", type=Path, help="directory of the PNGs (default: the JSON's)")
    parser.add_argument("--width", type=int, default=WIDTH, help=f"pixels (default {WIDTH})")
    parser.add_argument("--height", type=int, default=HEIGHT, help=f"pixels (default {HEIGHT})")
    args = parser.parse_args(argv)
    out = args.out or args.json.parent
    try:
        report = json.loads(args.json.read_text())
        pictures = [
            (out / f"timeline-k{k}.png", timeline_png(b, w, t, args.width, args.height))
            for k, b, w, t in report_timelines(report)
        ]
    except (OSError, ValueError) as exc:  # JSONDecodeError is a ValueError
        parser.error(f"{args.json}: {exc}")
    out.mkdir(parents=True, exist_ok=True)
    for path, png in pictures:
        path.write_bytes(png)
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
