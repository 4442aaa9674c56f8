"""research/tools/optimizer_memory.py (the optimizer-memory measurement of docs/performance.md) still runs."""
import math
import os
import re
import subprocess
import sys

import pytest

from test_benchmark import SMOKE_OVERRIDES  # tests/test_benchmark.py: the tiny model of the benchmark's smoke run

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.mark.slow
def test_optimizer_memory_smoke(tmp_path):
    cmd = [sys.executable, os.path.join(ROOT, "research", "tools", "optimizer_memory.py"), "--config",
           os.path.join(ROOT, "configs", "quickstart_cpu.yaml"), "--image_size", "64", "--steps", "1",
           *SMOKE_OVERRIDES]
    proc = subprocess.run(cmd, cwd=str(tmp_path), env=dict(os.environ, GLOG_v="3"), capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    match = re.search(r"loss ([-\d.naif]+), peak RSS \(VmHWM\) ([\d.]+) GiB", proc.stdout)
    assert match, proc.stdout[-2000:]
    assert math.isfinite(float(match.group(1))) and float(match.group(2)) > 0
