"""File modes of ``LOOPML_HOME``: the owner's alone.

The home holds request texts and feedback (``loopml.db``), API key hashes, Label Studio's database (with its API
token in plain text), the model store and the data. ``loopml up`` calls :func:`secure_home` before it starts
anything: the home and every folder in it 0700, every file 0600 (an owner's execute bit is kept), and the services
it starts inherit a umask of 077, so what they create later is the owner's too.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path

PRIVATE_UMASK = 0o077


@dataclass(frozen=True)
class Tightened:
    """What :func:`secure_home` changed: paths that others could read, write or enter."""

    folders: int
    files: int
    examples: list[str]

    @property
    def any(self) -> bool:
        return bool(self.folders or self.files)


def open_to_others(mode: int) -> bool:
    return bool(stat.S_IMODE(mode) & 0o077)


def secure_home(home: Path) -> Tightened:
    """Make ``home`` and everything under it private to its owner; returns what was open before. Symbolic links
    are not followed (a link's target is not the home's to change)."""
    folders = files = 0
    examples: list[str] = []

    def tighten(path: Path, mode: int, private: int) -> None:
        nonlocal folders, files
        if not open_to_others(mode):
            return
        os.chmod(path, private, follow_symlinks=False)
        if stat.S_ISDIR(mode):
            folders += 1
        else:
            files += 1
        if len(examples) < 5:
            examples.append(str(path.relative_to(home.parent)))

    home.mkdir(parents=True, exist_ok=True)
    tighten(home, home.lstat().st_mode, 0o700)
    for root, dirs, names in os.walk(home):
        for name in dirs:
            path = Path(root) / name
            mode = path.lstat().st_mode
            if stat.S_ISDIR(mode):
                tighten(path, mode, 0o700)
        for name in names:
            path = Path(root) / name
            try:
                mode = path.lstat().st_mode
            except FileNotFoundError:  # a service removed it meanwhile
                continue
            if stat.S_ISREG(mode):
                tighten(path, mode, 0o600 | (stat.S_IMODE(mode) & 0o100))
            elif stat.S_ISSOCK(mode) or stat.S_ISFIFO(mode):
                tighten(path, mode, 0o600)
    return Tightened(folders, files, examples)


def open_paths(home: Path, limit: int = 20) -> list[Path]:
    """Up to ``limit`` paths under ``home`` (itself included) that others can read, write or enter."""
    found: list[Path] = []
    if open_to_others(home.lstat().st_mode):
        found.append(home)
    for root, dirs, names in os.walk(home):
        for name in [*dirs, *names]:
            path = Path(root) / name
            try:
                mode = path.lstat().st_mode
            except FileNotFoundError:
                continue
            if not stat.S_ISLNK(mode) and open_to_others(mode):
                found.append(path)
                if len(found) >= limit:
                    return found
    return found
