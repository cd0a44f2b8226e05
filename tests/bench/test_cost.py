"""The default thread count's measurement of the machine's load (bench.metrics.cost)."""

from __future__ import annotations

import os
from types import SimpleNamespace

import bench.metrics.cost as cost

TICK = os.sysconf("SC_CLK_TCK")


def _stat_line(user: int, idle: int) -> str:
    # cpu  user nice system idle iowait irq softirq steal guest guest_nice
    return f"cpu  {user} 0 0 {idle} 0 0 0 0 0 0\ncpu0 0 0 0 0 0 0 0 0 0 0\n"


def test_busy_elsewhere_is_the_machine_s_busy_cpus_less_this_process_s(tmp_path, monkeypatch):
    """Over the interval 2 CPUs tick 200 jiffies (100 of wall time), 150 of them busy (1.5 CPUs
    on average), 50 of those this process's own (os.times): 1.0 CPU busy elsewhere."""
    stat = tmp_path / "stat"
    stat.write_text(_stat_line(user=1000, idle=1000))
    own = iter([1.0, 1.0 + 50 / TICK])
    monkeypatch.setattr(cost.os, "cpu_count", lambda: 2)
    monkeypatch.setattr(cost.os, "times", lambda: SimpleNamespace(user=next(own), system=0.0))
    monkeypatch.setattr(cost.time, "sleep",
                        lambda s: stat.write_text(_stat_line(user=1150, idle=1050)))
    assert abs(cost.busy_elsewhere(stat=str(stat)) - 1.0) < 1e-9


def test_busy_elsewhere_without_proc_stat_falls_back_to_the_load_average(tmp_path, monkeypatch):
    assert cost.busy_elsewhere(interval=0.0, stat=str(tmp_path / "missing")) is None
    monkeypatch.setattr(cost, "usable_cpus", lambda: 4)
    monkeypatch.setattr(cost, "busy_elsewhere", lambda: None)
    monkeypatch.setattr(cost.os, "getloadavg", lambda: (2.6, 0.0, 0.0))
    assert cost.free_cpus() == 1  # 4 - round(2.6)


def test_free_cpus_subtracts_the_rounded_load_elsewhere_and_keeps_one(monkeypatch):
    monkeypatch.setattr(cost, "usable_cpus", lambda: 2)
    for busy, free in [(0.0, 2), (0.4, 2), (0.6, 1), (1.7, 1), (3.0, 1)]:
        monkeypatch.setattr(cost, "busy_elsewhere", lambda b=busy: b)
        assert cost.free_cpus() == free, busy
    monkeypatch.setattr(cost, "usable_cpus", lambda: 1)  # a pinned worker: nothing to measure
    monkeypatch.setattr(cost, "busy_elsewhere", lambda: 1 / 0)
    assert cost.free_cpus() == 1
