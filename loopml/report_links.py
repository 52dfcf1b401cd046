"""Reports over HTTP: where a function's HTML reports live and the signed links that open them with one click.

The monitoring asset writes each drift report to ``LOOPML_HOME/reports/<function>/drift-<time>.html`` (and points
``latest.html`` at the newest); the review asset writes each round's summary there as ``review-<time>.html``.
The serving API serves them at ``/v1/functions/<function>/reports/<file>`` to:

* a request with an API key that sees the function (``Authorization: Bearer <key>`` or ``X-API-Key``, as on
  every route), or
* anyone holding a **signed link**: ``?expires=<unix seconds>&signature=<hex>``, where the signature is an
  HMAC-SHA256 of the path and the expiry under a secret kept in ``secrets/report-links.key`` (0600, made on first
  use). A browser cannot send a key header when someone clicks a link in Dagster, so the asset's metadata links
  the signed URL (as S3's pre-signed URLs do). A link opens that one report only, until it expires
  (``LOOPML_REPORT_LINK_DAYS``, default 30); deleting the secret file revokes every link at once.

Links point at ``LOOPML_PUBLIC_URL`` when set (the address a browser on another machine reaches the serving API
by, e.g. ``https://loopml.example.com``), else at the serving API on this machine.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import secrets
import time
from pathlib import Path
from urllib.parse import quote, urlencode

from loopml.config import Settings, env_int

SECRET_FILE = "report-links.key"
LINK_DAYS_ENV = "LOOPML_REPORT_LINK_DAYS"
PUBLIC_URL_ENV = "LOOPML_PUBLIC_URL"
DEFAULT_LINK_DAYS = 30
REPORT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,199}\.html$")  # no separators, no leading dot
ROUTE = "/v1/functions/{function}/reports/{report}"
ROUTE_PATTERN = re.compile(r"^/v1/functions/([^/]+)/reports/([^/]+)$")


def reports_dir(settings: Settings, function: str) -> Path:
    """The folder of ``function``'s reports."""
    return settings.home / "reports" / function


def report_path(settings: Settings, function: str, report: str) -> Path | None:
    """The file of report ``report`` (a file name such as ``drift-20261206T120000.html`` or ``latest.html``) of
    ``function``, or None when the name is not a report's or no such file is inside the function's folder."""
    if not REPORT_NAME.match(report):
        return None
    folder = reports_dir(settings, function).resolve()
    try:
        path = (folder / report).resolve(strict=True)  # latest.html is a link to the newest report
    except (FileNotFoundError, RuntimeError, OSError):
        return None
    return path if path.parent == folder and path.is_file() else None


def list_reports(settings: Settings, function: str) -> list[str]:
    """``function``'s report files (drift reports, review summaries), newest first (``latest.html``, the newest
    drift report, left out: it names one of them)."""
    folder = reports_dir(settings, function)
    if not folder.is_dir():
        return []
    files = [p for p in folder.glob("*.html") if p.name != "latest.html" and REPORT_NAME.match(p.name)]
    written = {p.name: p.stat().st_mtime for p in files if p.is_file()}
    return sorted(written, key=lambda name: (written[name], name), reverse=True)


def _secret(settings: Settings) -> bytes:
    path = settings.secrets_dir / SECRET_FILE
    try:
        return bytes.fromhex(path.read_text().strip())
    except (FileNotFoundError, ValueError):
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(secrets.token_hex(32))
    try:
        os.link(tmp, path)  # the first writer wins; a process that lost the race reads the winner's secret
    except FileExistsError:
        pass
    finally:
        tmp.unlink(missing_ok=True)
    return bytes.fromhex(path.read_text().strip())


def signature(settings: Settings, path: str, expires: int) -> str:
    """The hex HMAC-SHA256 of ``path`` (as requested, e.g. ``/v1/functions/f/reports/latest.html``) and
    ``expires``."""
    return hmac.new(_secret(settings), f"{path}\n{expires}".encode(), hashlib.sha256).hexdigest()


def report_route(function: str, report: str) -> str:
    return ROUTE.format(function=quote(function, safe=""), report=quote(report, safe=""))


def signed_url(settings: Settings, function: str, report: str, *, now: float | None = None) -> str:
    """An absolute URL of report ``report`` of ``function`` that opens without an API key until it expires."""
    days = env_int(LINK_DAYS_ENV, DEFAULT_LINK_DAYS)
    expires = int((time.time() if now is None else now) + days * 86400)
    path = report_route(function, report)
    base = os.environ.get(PUBLIC_URL_ENV, "").strip().rstrip("/") or settings.serving_url
    query = urlencode({"expires": expires, "signature": signature(settings, path, expires)})
    return f"{base}{path}?{query}"


def verify(settings: Settings, path: str, expires: str, given: str, *, now: float | None = None) -> bool:
    """Whether ``given`` signs ``path`` until ``expires`` and that time has not passed."""
    if not expires.isdigit() or int(expires) < (time.time() if now is None else now):
        return False
    return hmac.compare_digest(signature(settings, path, int(expires)), given)
