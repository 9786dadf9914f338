"""PNG charts from benchmark results, drawn next to the tables the benchmarks print.

A benchmark hands its numbers to ``bars`` (groups of bars: one group per thing measured, one bar
per condition) or ``lines`` (a value against a size, e.g. per-packet cost against prefixes);
``tables`` reads the Markdown tables a benchmark printed, for benchmarks whose numbers live
only in what they print (bench_proxy: its hook wraps ``main`` in ``TableTee`` and charts the
tables afterwards, so its internals stay as they are). matplotlib is the ``bench`` extra, never a
runtime dependency: without it a chart is skipped with one line on stderr, and the tables are
still printed. Every chart carries a caption saying where and how it was measured — these
machines are shared and noisy, and a chart without that would read as a result.
"""

from __future__ import annotations

import contextlib
import io
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence, TextIO

DOCS = Path(__file__).resolve().parents[1] / "docs" / "bench"
COLOURS = ("#2b6cb0", "#c05621", "#718096", "#2f855a", "#9b2c2c", "#6b46c1")
HATCHES = ("", "//", "..", "xx", "\\\\", "--")  # so the bars read without colour too


def _pyplot():  # type: ignore[no-untyped-def]
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    return plt


def _save(fig, path: Path, caption: str | None) -> Path:  # type: ignore[no-untyped-def]
    if caption:
        fig.text(0.01, 0.01, caption, fontsize=7, color="#4a5568", ha="left", va="bottom", wrap=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, metadata={"Software": None})
    import matplotlib.pyplot as plt

    plt.close(fig)
    print(f"chart: {path}", file=sys.stderr)
    return path


def bars(path: Path, title: str, groups: Sequence[str], series: dict[str, Sequence[float]], ylabel: str,
         caption: str | None = None, log: bool = False, labels: bool = True) -> Path | None:
    """Grouped bars: ``series[name][i]`` is the bar of condition ``name`` in group ``groups[i]``."""
    plt = _pyplot()
    if plt is None:
        print(f"chart {path.name} skipped: matplotlib is not installed (pip install 'sockgate[bench]')", file=sys.stderr)
        return None
    horizontal = len(groups) > 5  # long path names side by side would overlap: one per line instead
    fig, ax = plt.subplots(figsize=(8, 4.2 if not horizontal else 1.6 + 0.45 * len(groups)))
    width = 0.8 / max(1, len(series))
    for k, (name, values) in enumerate(series.items()):
        at = [i + (k - (len(series) - 1) / 2) * width for i in range(len(groups))]
        style = dict(label=name, color=COLOURS[k % len(COLOURS)], hatch=HATCHES[k % len(HATCHES)], edgecolor="white",
                     linewidth=0.5)
        drawn = ax.barh(at, values, width, **style) if horizontal else ax.bar(at, values, width, **style)
        if labels:
            ax.bar_label(drawn, labels=[_short(v) for v in values], fontsize=7, padding=2)
    if horizontal:
        ax.set_yticks(range(len(groups)), [_wrap(g, 34) for g in groups], fontsize=8)
        ax.invert_yaxis()  # the first group on top, as in the table
        ax.set_xlabel(ylabel)
        if log:
            ax.set_xscale("log")
    else:
        ax.set_xticks(range(len(groups)), [_wrap(g) for g in groups], fontsize=8)
        ax.set_ylabel(ylabel)
        if log:
            ax.set_yscale("log")
    ax.set_title(title, fontsize=10)
    ax.spines[["top", "right"]].set_visible(False)
    if len(series) > 1:
        ax.legend(fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.06 if caption else 0, 1, 1))
    return _save(fig, path, caption)


def lines(path: Path, title: str, xs: Sequence[float], series: dict[str, Sequence[float | None]], xlabel: str,
          ylabel: str, caption: str | None = None, logx: bool = True) -> Path | None:
    """One line per series over ``xs`` (a None is a point not measured: the line skips it)."""
    plt = _pyplot()
    if plt is None:
        print(f"chart {path.name} skipped: matplotlib is not installed (pip install 'sockgate[bench]')", file=sys.stderr)
        return None
    fig, ax = plt.subplots(figsize=(8, 4.2))
    markers = "osD^vx"
    for k, (name, values) in enumerate(series.items()):
        pts = [(x, v) for x, v in zip(xs, values) if v is not None]
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker=markers[k % len(markers)], label=name,
                color=COLOURS[k % len(COLOURS)])
    if logx:
        ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.spines[["top", "right"]].set_visible(False)
    ax.legend(fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.06 if caption else 0, 1, 1))
    return _save(fig, path, caption)


def _short(v: float) -> str:
    if v >= 10_000:
        return f"{v / 1000:,.0f}k"
    if v >= 100:
        return f"{v:,.0f}"
    return f"{v:.2g}" if v < 10 else f"{v:.0f}"


def _wrap(label: str, width: int = 22) -> str:
    words, out, line = label.split(), [], ""
    for w in words:
        if line and len(line) + 1 + len(w) > width:
            out.append(line)
            line = w
        else:
            line = f"{line} {w}".strip()
    return "\n".join(out + [line])


# -- tables a benchmark printed ----------------------------------------------------------------


@dataclass(frozen=True)
class Table:
    heading: str  # the last "### ..." line before it ("" when none)
    header: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]

    def column(self, name: str) -> list[float | None]:
        """The cells under the first header starting with ``name``, as numbers."""
        i = next(i for i, h in enumerate(self.header) if h.startswith(name))
        return [number(r[i]) if i < len(r) else None for r in self.rows]


def tables(text: str) -> list[Table]:
    """The Markdown tables in ``text``: a header line, a ``|---|`` line, then rows."""
    out: list[Table] = []
    heading, lines_ = "", text.splitlines()
    i = 0
    while i < len(lines_):
        line = lines_[i].strip()
        if line.startswith("#"):
            heading = line.lstrip("#").strip()
        if line.startswith("|") and i + 1 < len(lines_) and re.fullmatch(r"\|(\s*:?-+:?\s*\|)+", lines_[i + 1].strip()):
            rows, j = [], i + 2
            while j < len(lines_) and lines_[j].strip().startswith("|"):
                rows.append(_cells(lines_[j]))
                j += 1
            out.append(Table(heading, _cells(line), tuple(rows)))
            i = j
            continue
        i += 1
    return out


def _cells(line: str) -> tuple[str, ...]:
    return tuple(c.strip() for c in line.strip().strip("|").split("|"))


def number(cell: str) -> float | None:
    """The first number in a cell (``12,345``, ``0.95 (0.91, 1.0)``, ``3.2 Gbit/s``); None if none."""
    m = re.search(r"-?\d[\d,]*(?:\.\d+)?", cell)
    return float(m.group().replace(",", "")) if m else None


class TableTee(io.TextIOBase):
    """Standard output passed through and kept, so the tables printed can be charted after."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.kept = io.StringIO()

    def write(self, s: str) -> int:
        self.kept.write(s)
        return self.out.write(s)

    def flush(self) -> None:
        self.out.flush()

    def tables(self) -> list[Table]:
        return tables(self.kept.getvalue())


@contextlib.contextmanager
def teed() -> Iterator[TableTee]:
    """``with charts.teed() as tee:`` — standard output kept while the block runs."""
    tee, before = TableTee(sys.stdout), sys.stdout
    sys.stdout = tee  # type: ignore[assignment]
    try:
        yield tee
    finally:
        sys.stdout = before


def caption(what: str) -> str:
    """The line every chart carries: the machine and why its numbers are not a result alone."""
    import os
    import platform

    return (f"{what}. Measured on a shared machine ({os.cpu_count()} CPUs, Linux {platform.release()}) while other"
            f" work ran on it: wall-clock rates are noisy; docs/benchmarks.md gives the medians and every run.")


# -- per benchmark -------------------------------------------------------------------------------


def proxy_charts(found: Sequence[Table], out: Path = DOCS, command: str = "bench/bench_proxy.py") -> list[Path]:
    """bench_proxy's bulk and short-connection tables as bars: throughput (1 and 4 streams) and
    connection rate per path (direct, sockgate proxy, haproxy, socat, xinetd ...)."""
    drawn = []
    for t in found:
        if t.header[:2] == ("path", "1 stream") and any(h == "4 streams" for h in t.header):
            paths = [r[0] for r in t.rows]
            series = {"1 stream": _zeros(t.column("1 stream")), "4 streams": _zeros(t.column("4 streams"))}
            drawn.append(bars(out / "proxy-throughput.png", "Proxy throughput (iperf3)", paths, series, "Gbit/s (median)",
                              caption(f"{command}: {t.heading}")))
        elif t.header[:2] == ("path", "conn/s"):
            paths = [r[0] for r in t.rows]
            drawn.append(bars(out / "proxy-connections.png", "Proxy connection rate (connect / 64-byte echo / close)",
                              paths, {"conn/s": _zeros(t.column("conn/s"))}, "connections/s (median)",
                              caption(f"{command}: {t.heading}")))
    return [p for p in drawn if p is not None]


def _zeros(values: Sequence[float | None]) -> list[float]:
    return [0.0 if v is None else v for v in values]


def fleet_chart(configurations: Sequence[dict[str, object]], out: Path, command: str) -> Path | None:
    """bench_fleet's propagation (decision added → dropped on every host): p50 and p99 against the
    fleet's size, one pair of lines per stream interval."""
    intervals = sorted({float(str(c["interval"])) for c in configurations})
    sizes = sorted({int(str(c["hosts"])) for c in configurations})
    series: dict[str, list[float | None]] = {}
    for interval in intervals:
        at = {int(str(c["hosts"])): c for c in configurations if float(str(c["interval"])) == interval}
        for q in ("p50", "p99"):
            series[f"{q}, interval {interval:g} s"] = [
                float(str(at[n][q])) if n in at else None for n in sizes]
    return lines(out, "CrowdSec decision → dropped on every host of a simulated fleet", sizes, series,
                 "hosts (network namespaces, one agent each)", "seconds", caption(command), logx=False)
