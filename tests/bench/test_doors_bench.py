"""bench/doors.py at its smallest: a few classes, a second or two each, against a real edgeserver."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_doors_runs_each_class_with_and_without_a_token_and_tabulates_what_came_back(tmp_path: Path) -> None:
    out = tmp_path / "doors.md"
    command = [sys.executable, "-m", "bench.doors", "--classes", "watch", "headers", "--hold", "1", "--settle", "0"]
    run = subprocess.run(
        [*command, "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    rows = [line.strip("|").split("|") for line in out.read_text().splitlines()[2:]]
    table = {(r[0].strip(), r[1].strip()): [c.strip() for c in r] for r in rows}
    assert set(table) == {("watch", "True"), ("watch", "False"), ("headers", "True"), ("headers", "False")}
    for row in table.values():
        answered, sent = row[4].split("/")
        assert int(sent) > 0 and answered == sent  # every health check answered while the attack ran
        models_ok, models_sent = row[5].split("/")
        assert models_ok == models_sent  # and every ListModels
    assert table[("watch", "False")][7] == "CANCELLED 40"  # 4 on each of 10 connections: all held, then let go
    assert table[("headers", "False")][7] == "UNAUTHENTICATED 30"  # refused before a byte of body was read
    assert "RESOURCE_EXHAUSTED 7" in table[("headers", "True")][7]  # 15 Classify, 8 admitted


@pytest.mark.slow  # an edgeserver process and a process of 600 sockets
def test_doors_conns_class_closes_a_flooding_peer_past_its_cap_and_keeps_answering_fresh_connections(
    tmp_path: Path,
) -> None:
    out = tmp_path / "doors.md"
    command = [sys.executable, "-m", "bench.doors", "--classes", "conns", "--hold", "2", "--settle", "0"]
    run = subprocess.run([*command, "--out", str(out)], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert run.returncode == 0, run.stderr[-3000:]
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in out.read_text().splitlines()[2:]]
    assert [r[:2] for r in rows] == [["conns", "True"], ["conns", "False"]]
    for row in rows:
        opened, closed = (int(row[7].split(f"{word} ")[1].split(",")[0]) for word in ("opened", "daemon"))
        assert opened >= 600 and closed > 0  # the peer past --max-connections-per-peer lost connections
        assert row[4].split("/")[0] == row[4].split("/")[1]  # and health was answered throughout
