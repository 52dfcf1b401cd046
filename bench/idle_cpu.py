"""CPU the idle platform uses: `loopml up` in a temporary LOOPML_HOME (free ports), ``--functions`` text
functions, no traffic, no annotations; after a settling time, each service's CPU (its whole process tree) over a
window, as a share of one core.

    .venv/bin/python bench/idle_cpu.py [--settle 60] [--window 60] [--functions 1 | --demo]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def tree_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of ``pid`` and its live descendants."""
    total = 0.0
    try:
        root = psutil.Process(pid)
        for process in [root, *root.children(recursive=True)]:
            try:
                times = process.cpu_times()
                total += times.user + times.system
            except psutil.NoSuchProcess:
                continue
    except psutil.NoSuchProcess:
        pass
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--settle", type=float, default=60.0)
    parser.add_argument("--window", type=float, default=60.0)
    parser.add_argument("--functions", type=int, default=1, help="text functions created (no items)")
    parser.add_argument(
        "--demo",
        action="store_true",
        help="the demo's three functions and their items instead (no annotator, no calls)",
    )
    args = parser.parse_args()
    from loopml import services
    from loopml.config import get_settings
    from tests.conftest import free_ports

    with tempfile.TemporaryDirectory() as home:
        labelstudio, dagster, serving = free_ports(3)
        env = {
            **os.environ,
            "LOOPML_HOME": str(Path(home) / "home"),
            "LOOPML_LABELSTUDIO_PORT": str(labelstudio),
            "LOOPML_DAGSTER_PORT": str(dagster),
            "LOOPML_SERVING_PORT": str(serving),
        }
        env.pop("LOOPML_DATABASE_URL", None)

        def loopml(*argv: str) -> None:
            subprocess.run([sys.executable, "-m", "loopml.cli", *argv], cwd=ROOT, env=env, check=True, timeout=900)

        try:
            if args.demo:
                loopml("demo", "--no-annotator", "--rate", "0")
            else:
                loopml("up")
                for i in range(args.functions):
                    loopml("functions", "create", f"idle-sentiment-{i}", "--labels", "positive,negative")
            settings = get_settings({k: v for k, v in env.items() if k.startswith("LOOPML_")})
            time.sleep(args.settle)
            names = [s.name for s in services.status(settings) if s.running]
            pids = {name: services.read_pid(settings, name) for name in names}
            before = {name: tree_cpu_seconds(pid) for name, pid in pids.items() if pid}
            started = time.monotonic()
            time.sleep(args.window)
            elapsed = time.monotonic() - started
            after = {name: tree_cpu_seconds(pid) for name, pid in pids.items() if pid}
            print(
                f"idle platform, {'the demo' if args.demo else f'{args.functions} functions'}, {args.window:.0f} s "
                f"window after {args.settle:.0f} s "
                "settling\n"
            )
            print("| service | % of one core |")
            print("|---|---|")
            total = 0.0
            for name in names:
                if name in before:
                    share = 100.0 * (after[name] - before[name]) / elapsed
                    total += share
                    print(f"| {name} | {share:.1f} |")
            print(f"| **all** | **{total:.1f}** |")
        finally:
            subprocess.run([sys.executable, "-m", "loopml.cli", "down"], cwd=ROOT, env=env, timeout=300)


if __name__ == "__main__":
    main()
