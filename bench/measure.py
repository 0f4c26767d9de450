"""Tiny launcher: run a command, report its wall time and its own peak RSS, enforce limits.

    python bench/measure.py --result R.json [--timeout S] [--rss-cap-mb M] -- CMD ARGS...

Why a separate process: on Linux a child's ``ru_maxrss`` (from wait4 or RUSAGE_CHILDREN) is
at least the RSS its parent had when it forked, because exec() carries the old address
space's high-water mark over. Forked straight from the benchmark (which holds evaluation data
and onnxruntime sessions) every child would read as at least the benchmark's size. This
launcher imports nothing heavy (a few MiB), so the peak it reports is the command's own.

The command's stdout/stderr are inherited. R.json gets {"seconds", "peak_rss_mb",
"returncode", "failure"}; failure is "timeout (> S s)", "memory cap (...)", "exit code N" or null.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time


def _rss_mb(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def measure(cmd: list[str], timeout: float, rss_cap_mb: float) -> dict:
    """Run `cmd` to completion (or kill it at a limit); wall time and wait4 peak RSS."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd)
    failure = None
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            break
        if failure is None:
            if time.perf_counter() - start > timeout:
                failure = f"timeout (> {timeout:.0f} s)"
                proc.kill()
            elif _rss_mb(proc.pid) > rss_cap_mb:
                failure = f"memory cap (RSS > {rss_cap_mb:.0f} MiB)"
                proc.kill()
        time.sleep(0.05)
    seconds = time.perf_counter() - start
    proc.returncode = code = os.waitstatus_to_exitcode(status)
    if failure is None and code != 0:
        failure = f"exit code {code}"
    return {"seconds": seconds, "peak_rss_mb": usage.ru_maxrss / 1024, "returncode": code, "failure": failure}


def main(argv: list[str]) -> int:
    if "--" not in argv:
        print(__doc__, file=sys.stderr)
        return 2
    split = argv.index("--")
    opts, cmd = argv[:split], argv[split + 1:]
    args = dict(zip(opts[::2], opts[1::2]))
    result = measure(cmd, float(args.get("--timeout", 3600)), float(args.get("--rss-cap-mb", 1e12)))
    with open(args["--result"], "w") as fh:
        json.dump(result, fh)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
