"""Dagster's code server for LoopML's code location, with the storage speed-ups of ``storage_speedups``.

Runs ``dagster api grpc`` with the arguments it is given. Each sensor tick opens a Dagster instance from its
reference; with the speed-ups that costs a few milliseconds instead of about fifty.

    python -m pipelines.code_server --socket PATH --module-name pipelines.definitions --attribute defs ...
"""

from __future__ import annotations

import sys


def main() -> None:
    from dagster._cli import main as dagster_main

    from pipelines.storage_speedups import install

    install()
    sys.argv = ["dagster", "api", "grpc", *sys.argv[1:]]
    sys.exit(dagster_main())


if __name__ == "__main__":
    main()
