"""bench/charts.py: the tables a benchmark printed read back as numbers, and charts drawn as PNG."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parents[2] / "bench"))

import charts  # noqa: E402

PRINTED = """\
machine: 2 vCPU
### Bulk (iperf3 -t 4 -O 1, Gbit/s; medians of 5 runs; ratios per run)

| path | 1 stream | ratio to direct | ratio to haproxy | 4 streams | ratio to direct | ratio to haproxy |
|---|---|---|---|---|---|---|
| direct | 41.2 | 1.00 | - | 60.1 | 1.00 | - |
| sockgate proxy | 20.5 | 0.50 (0.48, 0.52) | 1.10 | 30.0 | 0.50 | 1.02 |
| haproxy | 18.6 | 0.45 | 1.00 | 29.4 | 0.49 | 1.00 |

### Short connections (4 threads, connect / 64-byte echo / close, 5 s a run in 10 interleaved slices, p50/p99 the medians of the slices'; medians of 5 runs)

| path | conn/s | ratio to direct | p50 µs | p99 µs | p50 added µs | p99 added µs | failures | relay CPU µs/conn |
|---|---|---|---|---|---|---|---|---|
| direct | 12,345 | 1.00 | 80 | 900 | 0 | 0 | 0 | - |
| xinetd | 1,234 | 0.10 | 800 | 9,000 | 720 | 8,100 | 0 | 700 |
"""


def test_printed_tables_are_read_with_their_heading_and_numbers() -> None:
    bulk, short = charts.tables(PRINTED)
    assert bulk.heading.startswith("Bulk (iperf3") and bulk.header[:2] == ("path", "1 stream")
    assert bulk.column("4 streams") == [60.1, 30.0, 29.4]
    assert bulk.column("ratio to direct") == [1.0, 0.5, 0.45]
    assert short.column("conn/s") == [12345.0, 1234.0] and [r[0] for r in short.rows] == ["direct", "xinetd"]
    assert charts.number("-") is None and charts.number("0.91 (0.91)") == 0.91


def test_the_proxy_hook_draws_throughput_and_connection_rate(tmp_path: Path) -> None:
    drawn = charts.proxy_charts(charts.tables(PRINTED), tmp_path)
    assert [p.name for p in drawn] == ["proxy-throughput.png", "proxy-connections.png"]
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in drawn)


def test_lines_skip_points_not_measured_and_the_tee_passes_output_through(tmp_path: Path,
                                                                          capsys: pytest.CaptureFixture[str]) -> None:
    p = charts.lines(tmp_path / "c.png", "cost", [1000, 100000], {"classic": [30.0, None], "eBPF": [20.0, 25.0]},
                     "prefixes", "ns", charts.caption("test"))
    assert p is not None and p.stat().st_size > 1000
    many = charts.bars(tmp_path / "h.png", "rate", [f"path {i}" for i in range(8)], {"conn/s": [float(i) for i in range(8)]},
                       "conn/s")
    assert many is not None and many.read_bytes()[:4] == b"\x89PNG"
    with charts.teed() as tee:
        print("| a | b |\n|---|---|\n| x | 1 |")
    assert capsys.readouterr().out.startswith("| a | b |")
    assert tee.tables()[0].column("b") == [1.0]


def test_without_matplotlib_a_chart_is_skipped_in_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(charts, "_pyplot", lambda: None)
    assert charts.bars(tmp_path / "x.png", "t", ["a"], {"s": [1.0]}, "y") is None
    assert capsys.readouterr().err == "chart x.png skipped: matplotlib is not installed (pip install 'sockgate[bench]')\n"
    assert not (tmp_path / "x.png").exists()
