"""The machine under a benchmark: background load (other jobs keeping cores busy), a process's CPU and memory."""

from __future__ import annotations

import argparse
import contextlib
import logging
import multiprocessing as mp
import os
from typing import Iterator

log = logging.getLogger(__name__)


def _spin() -> None:
    while True:
        pass


def add_load_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--load",
        type=int,
        default=0,
        metavar="N",
        help="keep N cores busy with spinning processes while measuring, as other jobs on a busy "
        "machine would (default 0)",
    )


@contextlib.contextmanager
def busy_cores(n: int) -> Iterator[None]:
    """Keep ``n`` cores busy (one spinning process each, normal priority) inside the block."""
    procs = [mp.get_context("spawn").Process(target=_spin, daemon=True, name=f"kws-load-{i}") for i in range(n)]
    for p in procs:
        p.start()
    if n:
        log.info("%d background process(es) keep cores busy", n)
    try:
        yield
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.join()


def rss_mb(pid: int | str = "self") -> float:
    """Resident memory of a process (Linux ``/proc``), MB; NaN where unknown."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def cpu_seconds(pid: int | str = "self") -> float:
    """User + system CPU time a process has used (Linux ``/proc``), seconds."""
    with open(f"/proc/{pid}/stat") as f:
        # Fields after the parenthesised command name (which may hold spaces).
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
