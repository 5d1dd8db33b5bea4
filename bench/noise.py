"""How much of the machine other processes took while the bench measured: a 2-core box is easily disturbed.

The CPU the whole box used (/proc/stat) minus the CPU of this process and its waited-for children
(os.times) is what everyone else used. The bench waits (bounded) for a quiet machine before each
stage and records this per stage, so a slow number can be told apart from a busy neighbour.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path

TICK = os.sysconf("SC_CLK_TCK")  # /proc/stat counts in USER_HZ ticks
QUIET_CORES = 0.25  # other processes' average use, in cores, below which the machine counts as quiet
NOISY_CORES = 0.2  # others' average use during a stage above which its times are suspect
SAMPLE_S = 1.0


def _ticks() -> tuple[int, int]:
    """(busy, steal) ticks of all CPUs since boot; guest time is already inside user."""
    user, nice, system, _idle, _iowait, irq, softirq, steal = map(int, Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9])
    return user + nice + system + irq + softirq, steal


def _own_cpu_s() -> float:
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def wait_quiet(max_s: float) -> dict[str, float]:
    """Sample the machine until others use < QUIET_CORES, at most `max_s` seconds (call while idle)."""
    t0 = time.monotonic()
    while True:
        with CpuMeter() as m:
            time.sleep(SAMPLE_S)
        waited = time.monotonic() - t0
        if m.result["foreign_cores"] < QUIET_CORES or waited >= max_s:
            return {"waited_s": round(waited, 1), "foreign_cores": m.result["foreign_cores"]}


@dataclass
class CpuMeter:
    """`with CpuMeter() as m: ...` then `m.result`: wall, our CPU, others' and the hypervisor's (steal) average cores.

    A child's CPU counts as ours only once it has been waited for: stop servers inside the block.
    """

    result: dict[str, float] = field(default_factory=dict)

    def __enter__(self) -> CpuMeter:
        self._t0, self._ticks0, self._own0 = time.monotonic(), _ticks(), _own_cpu_s()
        return self

    def __exit__(self, *exc: object) -> None:
        wall = time.monotonic() - self._t0
        busy, steal = (b - a for a, b in zip(self._ticks0, _ticks(), strict=True))
        own = _own_cpu_s() - self._own0
        self.result = {
            "wall_s": round(wall, 2),
            "own_cpu_s": round(own, 2),
            "foreign_cores": round(max(0.0, busy / TICK - own) / wall, 3),
            "steal_cores": round(steal / TICK / wall, 3),
        }
