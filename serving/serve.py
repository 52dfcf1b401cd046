"""The serving process as the platform starts it: ``bentoml serve serving.service:LoopML``, with a dead worker
respawned within a second.

BentoML's arbiter (circus) looks at its workers every 10 s (``check_delay``), so a worker that crashed or was
killed stayed dead for up to 10 s before a new one even started (7 s measured), then took about 3 s to load.
This entry point runs the same ``bentoml serve`` command with the arbiter looking every
:data:`RESPAWN_CHECK_SECONDS`. Plain ``bentoml serve serving.service:LoopML`` serves the same API.

    python -m serving.serve --host 127.0.0.1 --port 3100
"""

from __future__ import annotations

import sys
from typing import Any

SERVICE = "serving.service:LoopML"
RESPAWN_CHECK_SECONDS = 0.5


def respawn_quickly() -> None:
    """Make BentoML create its arbiter with a short ``check_delay`` (it imports the factory when it serves)."""
    import bentoml._internal.utils.circus as circus_utils

    create = circus_utils.create_standalone_arbiter
    if getattr(create, "loopml_quick", False):
        return

    def create_standalone_arbiter(watchers: list[Any], *, threaded: bool = False, **kwargs: Any) -> Any:
        kwargs.setdefault("check_delay", RESPAWN_CHECK_SECONDS)
        return create(watchers, threaded=threaded, **kwargs)

    create_standalone_arbiter.loopml_quick = True  # type: ignore[attr-defined]
    circus_utils.create_standalone_arbiter = create_standalone_arbiter


def main(argv: list[str] | None = None) -> None:
    """``bentoml serve serving.service:LoopML [options]`` with :func:`respawn_quickly`."""
    respawn_quickly()
    from bentoml_cli.cli import cli

    sys.argv[0] = "bentoml"
    cli(["serve", SERVICE, *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    main()
