"""The README's demo: ``model-agent demo`` runs the whole path and cleans up, Ctrl-C included."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil  # type: ignore[import-untyped]


def _demo(*args: str) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "KUBECONFIG"))}
    return subprocess.Popen(
        [sys.executable, "-m", "agent", "demo", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )


def test_demo_runs_the_whole_path_and_removes_its_files() -> None:
    proc = _demo()
    out, _ = proc.communicate(timeout=240)
    assert proc.returncode == 0, out
    assert "ready:" in out and "verified" in out
    assert re.search(r"-> 3 vectors of 384 dims", out), out
    similar, unrelated = (float(x) for x in re.findall(r"= (-?\d\.\d+)", out))
    assert similar > unrelated
    root = Path(re.search(r"temp dir\s+(\S+)", out).group(1))  # type: ignore[union-attr]
    assert not root.exists()


def test_ctrl_c_stops_every_process_and_cleans_up() -> None:
    proc = _demo("--serve")
    assert proc.stdout is not None
    lines = []
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        lines.append(line)
        if "press Ctrl-C" in line or not line:
            break
    out = "".join(lines)
    assert "press Ctrl-C" in out, out
    root = Path(re.search(r"temp dir\s+(\S+)", out).group(1))  # type: ignore[union-attr]
    children = psutil.Process(proc.pid).children(recursive=True)
    assert len(children) == 3, children  # moto, agent, serving
    proc.send_signal(signal.SIGINT)
    proc.communicate(timeout=60)
    assert proc.returncode != 0
    _, alive = psutil.wait_procs(children, timeout=10)
    assert not alive
    assert not root.exists()
