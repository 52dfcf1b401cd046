"""Import heavy modules in a background thread while a run waits on the network.

A training run pulls annotations from Label Studio first (network-bound) and only then needs Great
Expectations, torch and Lightning; importing them meanwhile takes seconds off the loop.
"""

from __future__ import annotations

import importlib
import threading

TRAINING_MODULES = ("great_expectations", "torch", "pytorch_lightning", "sklearn.feature_extraction.text")
_started = False
_lock = threading.Lock()


def _import_all(modules: tuple[str, ...]) -> None:
    for name in modules:
        try:
            importlib.import_module(name)
        except Exception:  # noqa: BLE001 - the real import later reports the error properly
            return


def warm_imports(modules: tuple[str, ...] = TRAINING_MODULES) -> None:
    """Start importing ``modules`` in a daemon thread (once per process)."""
    global _started
    with _lock:
        if _started:
            return
        _started = True
    threading.Thread(target=_import_all, args=(modules,), name="loopml-warmup", daemon=True).start()
