"""What a server's processes use, read from /proc: CPU seconds and resident / proportional /
unique memory (smaps_rollup), summed over a process and its descendants (a supervisor's workers).

RSS counts every shared page in every process that maps it; PSS divides each shared page among
the processes sharing it (so the PSS of all workers sums to the memory they really take); USS is
the pages no other process maps. Memory-mapped table pages are shared file pages: N workers that
map one artifact hold it once."""

from __future__ import annotations

import os
from pathlib import Path


def family(pid: int) -> list[int]:
    """`pid` and all its descendants."""
    found = [pid]
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            children = (task / "children").read_text().split()
        except OSError:
            continue
        for child in children:
            found.extend(family(int(child)))
    return found


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU seconds so far of the given processes."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / tick  # utime, stime
    return total


def memory(pid: int) -> dict[str, int]:
    """Bytes of rss, pss, uss (private clean + dirty) and pss_file (the shared file pages' share,
    where the tables' mapped pages show) of one process."""
    values: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
        key, _, rest = line.partition(":")
        parts = rest.split()
        if parts and parts[-1] == "kB":
            values[key.strip()] = int(parts[0]) * 1024
    return {
        "rss": values.get("Rss", 0),
        "pss": values.get("Pss", 0),
        "uss": values.get("Private_Clean", 0) + values.get("Private_Dirty", 0),
        "pss_file": values.get("Pss_File", 0),
    }


def memory_of(pids: list[int]) -> dict[str, int]:
    """The sums of `memory` over processes."""
    total = {"rss": 0, "pss": 0, "uss": 0, "pss_file": 0}
    for pid in pids:
        try:
            for key, value in memory(pid).items():
                total[key] += value
        except OSError:
            continue
    return total


def mapped(pid: int, prefix: str) -> dict[str, int]:
    """Bytes of rss and pss of one process's mappings of files below `prefix` (e.g. an artifact
    directory: the table's pages, as this process sees them)."""
    total = {"rss": 0, "pss": 0}
    inside = False
    for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
        head = line.split(None, 5)
        if head and "-" in head[0] and ":" not in head[0]:  # a mapping's header line
            inside = len(head) == 6 and head[5].startswith(prefix)
        elif inside and head and head[0] in ("Rss:", "Pss:"):
            total[head[0][:-1].lower()] += int(head[1]) * 1024
    return total


def mapped_of(pids: list[int], prefix: str) -> dict[str, int]:
    total = {"rss": 0, "pss": 0}
    for pid in pids:
        try:
            for key, value in mapped(pid, prefix).items():
                total[key] += value
        except OSError:
            continue
    return total
