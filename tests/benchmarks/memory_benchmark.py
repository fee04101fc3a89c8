"""Peak memory of ``dicomnode serve`` receiving large instances at once.

Run as ``python tests/benchmarks/memory_benchmark.py [--instances 4] [--megabytes 250]`` (not collected
by pytest). Sends N instances of M MB each at the same time, one DCMTK storescu (own calling AE title,
own association) per instance, into a fresh node with receive-only settings, once per memory budget
(``DICOMNODE_DICOM__MAX_INFLIGHT_MB``), and prints the node's resident memory before, its peak (VmHWM)
and the time until every instance was acknowledged. No assertions: figures depend on the machine.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.support import (
    NodeServer,
    acknowledged_files,
    free_port,
    receiver_only_env,
    send_concurrently,
    write_large_mr,
)


def _memory_mb(pid: int) -> tuple[int, int]:
    """(VmRSS, VmHWM) of a process in MB."""
    fields = dict(
        line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text(encoding="ascii").splitlines()
    )
    return int(fields["VmRSS"].split()[0]) // 1024, int(fields["VmHWM"].split()[0]) // 1024


def run(work: Path, files: list[Path], budget_mb: int, megabytes: int) -> tuple[int, int, float, int]:
    """(RSS before, peak RSS, seconds, acknowledged) for one transfer into a fresh node."""
    server = NodeServer(
        data_dir=work / f"data-{budget_mb}",
        log_path=work / f"node-{budget_mb}.log",
        port=free_port(),
        extra_env={
            **receiver_only_env(),
            "DICOMNODE_WEB__ENABLED": "false",
            "DICOMNODE_DICOM__MAX_INSTANCE_MB": str(megabytes + 16),
            "DICOMNODE_DICOM__MAX_INFLIGHT_MB": str(budget_mb),
            "DICOMNODE_STORAGE__MIN_FREE_MB": "0",
        },
    ).start()
    try:
        before, _ = _memory_mb(server.pid)
        started = time.monotonic()
        outputs = send_concurrently(server.port, [[path] for path in files], timeout_s=900)
        seconds = time.monotonic() - started
        _, peak = _memory_mb(server.pid)
    finally:
        server.stop()
    return before, peak, seconds, sum(len(acknowledged_files(output)) for output in outputs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--instances", type=int, default=4)
    parser.add_argument("--megabytes", type=int, default=250)
    parser.add_argument("--budgets", type=int, nargs="+", default=[512, 4096])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="memory-benchmark-") as folder:
        work = Path(folder)
        files = [write_large_mr(work / f"large-{n}.dcm", args.megabytes) for n in range(args.instances)]
        print(f"{args.instances} concurrent instances of {args.megabytes} MB, one association each")
        print(f"{'MAX_INFLIGHT_MB':>16} {'RSS before':>11} {'peak RSS':>9} {'seconds':>8} {'stored':>7}")
        for budget in args.budgets:
            before, peak, seconds, stored = run(work, files, budget, args.megabytes)
            print(f"{budget:>16} {before:>8} MB {peak:>6} MB {seconds:>8.1f} {stored:>4}/{len(files)}")


if __name__ == "__main__":
    main()
