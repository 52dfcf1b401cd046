"""The `loopml` command: run the platform, manage functions, run the demo."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import click

if TYPE_CHECKING:
    from loopml.client import Client
    from loopml.deployments import DeploymentStore

from loopml.config import Settings, get_settings
from loopml.functions import FunctionError


def _step(message: str) -> None:
    click.echo(click.style("==> ", fg="cyan") + message)


def _wait(settings: Settings, what: str, check: Callable[[], bool], service: str) -> None:
    """Wait for ``check`` while ``service`` makes progress (log output or CPU), with a line every 10 s; raise a
    ClickException naming the log when it exits or hangs."""
    from loopml import services
    from loopml.readiness import NotReady, Progress, wait_ready

    log = services.log_file(settings, service)
    shown = [0]

    def on_wait(elapsed: float) -> None:
        if elapsed >= shown[0] + 10:
            shown[0] = int(elapsed)
            click.echo(f"    still waiting for {what}: {elapsed:.0f} s (it is working; see {log})")

    try:
        waited = wait_ready(
            check,
            what,
            Progress(log, services.read_pid(settings, service)),
            on_wait=on_wait,
            tail=lambda: log.read_text(errors="replace")[-2000:] if log.exists() else "",
        )
    except NotReady as error:
        raise click.ClickException(f"{error}\nsee {log}") from None
    click.echo(f"    {what} is up ({waited:.1f} s)")


def _wait_for_service(settings: Settings, what: str, service: str, ready: Callable[[], bool]) -> bool:
    """Wait until ``ready()`` or ``service`` stops (see :func:`_wait`); whether it is ready."""
    from loopml import services

    _wait(settings, what, lambda: ready() or not services.service_running(settings, service), service)
    return ready()


def start_platform(settings: Settings) -> None:
    """Start Label Studio, Dagster (webserver + daemon) and the serving API; wait until each answers."""
    from loopml import services
    from loopml.labelstudio_server import ensure_credentials

    settings.ensure_dirs()
    try:
        services.check_ports(settings)
        services.check_dagster_bind(settings)
    except services.ServiceError as error:
        raise click.ClickException(str(error)) from None
    _secure_home(settings)
    _ensure_stores(settings)
    _step(f"Label Studio on {settings.labelstudio_url} (data in {settings.labelstudio_data_dir})")
    ensure_credentials(settings)
    services.start_labelstudio_service(settings)
    click.echo("    (the first start creates its database: about 30 s on an idle machine, minutes on a busy one)")
    _wait(settings, "Label Studio", lambda: services.labelstudio_healthy(settings), "labelstudio")
    _step(f"Dagster webserver and daemon on {settings.dagster_url} (home {settings.dagster_home})")
    services.start_run_worker(settings)
    services.start_code_server(settings)
    if not _wait_for_service(
        settings,
        "the code server (loads the code location once, for the webserver and the daemon)",
        "code-server",
        lambda: services.code_server_ready(settings),
    ):
        raise click.ClickException(
            "the Dagster code server stopped while loading pipelines/; "
            f"see {services.log_file(settings, 'code-server')}"
        )
    services.start_dagster_webserver(settings)
    _wait(settings, "Dagster", lambda: services.dagster_healthy(settings), "dagster-webserver")
    worker_log = services.log_file(settings, "run-worker")
    if not _wait_for_service(
        settings,
        "the run worker (imports the stack once; runs fork from it)",
        "run-worker",
        lambda: services.run_worker_ready(settings),
    ):
        click.echo(f"    warning: the run worker stopped (see {worker_log}); runs start the slow way meanwhile")
    services.start_dagster_daemon(settings)
    _step(f"BentoML serving API on {settings.serving_url} (model store {settings.bentoml_home})")
    services.start_serving(settings)
    serving_log = str(services.log_file(settings, "serving"))
    if not _wait_for_service(settings, "the serving API", "serving", lambda: services.serving_healthy(settings)):
        raise click.ClickException(f"the serving API stopped while starting; see {serving_log}")
    if not services.daemon_running(settings):
        raise click.ClickException(
            f"the Dagster daemon stopped; see {services.log_file(settings, 'dagster-daemon')} and run `loopml up` again"
        )
    _register_hooks(settings)
    services.start_supervisor(settings)
    click.echo("    the supervisor restarts any of these that dies (with backoff; restarts in run/restarts.jsonl)")


def _ensure_stores(settings: Settings) -> None:
    """With a PostgreSQL ``LOOPML_DATABASE_URL``: its databases exist (created when missing) and it answers."""
    from loopml.stores import StoreError

    stores = settings.stores
    if not stores.postgres:
        return
    try:
        created = stores.ensure()
    except StoreError as error:
        raise click.ClickException(f"{error}; check LOOPML_DATABASE_URL") from None
    made = f" (created {', '.join(created)})" if created else ""
    _step(f"PostgreSQL: the platform, Dagster and Label Studio databases{made}")


def _secure_home(settings: Settings) -> None:
    """LOOPML_HOME the owner's alone (0700 folders, 0600 files), and so is whatever the services create later."""
    import os

    from loopml.permissions import PRIVATE_UMASK, secure_home

    os.umask(PRIVATE_UMASK)  # the services started below inherit it
    tightened = secure_home(settings.home)
    if tightened.any:
        click.echo(
            f"    made {tightened.folders} folders and {tightened.files} files under {settings.home} private to "
            f"their owner (they were open to others: {', '.join(tightened.examples)} ...)"
        )


def _register_hooks(settings: Settings) -> None:
    """Label Studio's webhook on every function's project (annotation changes reach the sensor in about a
    second); without it the sensor still finds them by polling, so a failure here is only a warning."""
    from loopml.annotation_hooks import ensure_hooks
    from loopml.labelstudio import LabelStudioClient, LabelStudioError, LabelStudioUnavailable

    try:
        changed = ensure_hooks(settings, LabelStudioClient.from_settings(settings))
    except (LabelStudioError, LabelStudioUnavailable) as error:
        click.echo(f"    warning: Label Studio webhooks not registered ({error}); annotations are found by polling")
        return
    if changed:
        click.echo(f"    Label Studio webhooks registered for {', '.join(changed)}")


def print_urls(settings: Settings) -> None:
    from loopml.labelstudio_server import ensure_credentials

    creds = ensure_credentials(settings)
    click.echo("")
    click.echo(
        f"  Label Studio  {settings.labelstudio_url}   (user {creds.username}, password in "
        f"{settings.secrets_dir / 'labelstudio.json'})"
    )
    click.echo(f"  Dagster       {settings.dagster_url}")
    click.echo(f"  Serving API   {settings.serving_url}/docs   (API keys: `loopml keys create NAME`)")
    click.echo(f"  Home          {settings.home}")
    click.echo("  Stop with `loopml down` (or `make down`).")


@click.group()
def main() -> None:
    """LoopML: annotate, train, deploy, monitor, review, evolve."""


@main.command()
def up() -> None:
    """Start Label Studio, the Dagster webserver and daemon, and the serving API on loopback."""
    settings = get_settings()
    start_platform(settings)
    print_urls(settings)


@main.command()
def down() -> None:
    """Stop the services `loopml up` started."""
    from loopml import services

    stopped = services.down(get_settings())
    click.echo(f"stopped: {', '.join(stopped)}" if stopped else "nothing was running")


@main.command("migrate-db")
@click.argument("url")
def migrate_db(url: str) -> None:
    """Copy this installation's SQLite stores (platform database, Dagster, Label Studio) into PostgreSQL at URL.

    Stop the platform first; afterwards set LOOPML_DATABASE_URL=URL and run `loopml up`."""
    from loopml.migrate import MigrationError, migrate
    from loopml.stores import StoreError

    try:
        report = migrate(get_settings(), url, say=lambda line: click.echo(f"==> {line}"))
    except (MigrationError, StoreError) as error:
        raise click.ClickException(str(error)) from None
    for line in report.lines():
        click.echo(f"    {line}")
    click.echo(f"done: now `export LOOPML_DATABASE_URL={url}` and `loopml up`")


@main.command()
@click.option("--name", default=None, help="the worker's name (default: a random one); unique per worker")
@click.option(
    "--concurrency",
    "-c",
    default=None,
    type=click.IntRange(1),
    help="runs side by side on this worker [default: LOOPML_WORKER_CONCURRENCY or 8]",
)
def worker(name: str | None, concurrency: int | None) -> None:
    """Run a Celery worker that executes Dagster runs, in the foreground (Ctrl-C stops it).

    Needs LOOPML_BROKER_URL (Redis or RabbitMQ) and, for a worker on another machine, LOOPML_DATABASE_URL
    (PostgreSQL) and LOOPML_HOME on storage shared with the platform's machine."""
    import os

    from loopml import services
    from pipelines.celery_runs import BrokerError, broker_kind, worker_argv, worker_concurrency, worker_name

    settings = get_settings()
    if not settings.broker_url:
        raise click.ClickException("set LOOPML_BROKER_URL (redis://host:6379/0 or amqp://user:pw@host:5672//)")
    try:
        broker_kind(settings.broker_url)
    except BrokerError as error:
        raise click.ClickException(str(error)) from None
    settings.ensure_dirs()
    services.write_dagster_yaml(settings)  # the instance the worker's runs open (storage, launcher)
    argv = worker_argv(worker_name(name), concurrency or worker_concurrency())
    click.echo(f"==> Celery worker {argv[argv.index('--hostname') + 1]} on {settings.broker_url.split('@')[-1]}")
    os.execve(argv[0], argv, services.service_env(settings))


@main.command()
def status() -> None:
    """Show which services are running and healthy."""
    from loopml import services

    settings = get_settings()
    for item in services.status(settings):
        state = "healthy" if item.healthy else ("running" if item.running else "stopped")
        click.echo(f"  {item.name:<18} {state:<8} pid={item.pid or '-':<8} {item.url or ''}")
    try:
        from loopml.functions import FunctionRegistry

        names = FunctionRegistry(settings).names()
        click.echo(f"  functions: {', '.join(names) if names else 'none'}")
    except Exception as error:  # noqa: BLE001 - status must always print
        click.echo(f"  functions: unavailable ({error})")


@main.group()
def functions() -> None:
    """Create and list functions; add or remove labels of a live function."""


@functions.command("create")
@click.argument("name")
@click.option(
    "--type", "input_type", type=click.Choice(["text", "image"]), default="text", show_default=True, help="input type"
)
@click.option("--labels", required=True, help="comma-separated label set, e.g. positive,negative")
@click.option(
    "--encoder",
    default=None,
    help="text: minilm-l6-int8 (default, fastest) or e5-small-q4 (more accurate with few labels, ~3x slower); "
    "image: efficientnet-lite0-224 (default, more accurate) or efficientnet-lite0-112 (about 4x faster on a CPU)",
)
def functions_create(name: str, input_type: str, labels: str, encoder: str | None) -> None:
    """Create a function NAME: a Label Studio project, a registry entry and a Dagster partition (run again, it
    finishes an interrupted create and returns the same project)."""
    settings = get_settings()
    settings.ensure_dirs()
    from loopml.functions import create_function

    project_id = create_function(settings, name, input_type, labels, encoder_id=encoder, echo=click.echo)
    click.echo(
        f"created function {name} (Label Studio project {project_id}: {settings.labelstudio_url}/projects/{project_id})"
    )


@main.group()
def items() -> None:
    """Add data to a function from files."""


@items.command("add")
@click.argument("name")
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option(
    "--folder-labels",
    is_flag=True,
    help="image functions: an image in a folder named after a label (e.g. data/cat/1.png) is labelled with it",
)
def items_add(name: str, paths: tuple[Path, ...], folder_labels: bool) -> None:
    """Import the items of PATHS into function NAME's Label Studio project. A text function takes .txt (a text
    per line), .csv (`text` and optional `label` columns) and .jsonl (`text` and optional `label` fields); an
    image function takes image files (PNG, JPEG, WebP, GIF) and folders of them. Labelled items train as
    annotations. Every file is checked before anything is imported."""
    from tqdm import tqdm

    from loopml.items import ItemsError, add_items
    from loopml.labelstudio import LabelStudioClient

    settings = get_settings()
    bar: tqdm | None = None

    def progress(done: int, total: int) -> None:
        nonlocal bar
        if bar is None:
            bar = tqdm(total=total, unit="item", desc=f"importing into {name}")
        bar.update(done - bar.n)

    try:
        added = add_items(
            settings,
            LabelStudioClient.from_settings(settings),
            name,
            list(paths),
            progress,
            folder_labels=folder_labels,
        )
    except ItemsError as error:
        raise click.ClickException(str(error)) from None
    finally:
        if bar is not None:
            bar.close()
    repeats = f"; {added.repeated} repeated items imported once" if added.repeated else ""
    click.echo(
        f"added {added.imported} items to {name} ({added.labelled} labelled){repeats}: "
        f"{settings.labelstudio_url}/projects/{added.project_id}"
    )


@functions.command("list")
def functions_list() -> None:
    """List the registered functions."""
    from loopml.functions import FunctionRegistry

    specs = FunctionRegistry(get_settings()).list()
    if not specs:
        click.echo("no functions yet; create one with `loopml functions create NAME --labels a,b`")
    for spec in specs:
        click.echo(
            f"  {spec.name:<24} {spec.input_type:<6} project={spec.labelstudio_project_id}  "
            f"labels={','.join(spec.labels)}"
        )


@functions.command("add-label")
@click.argument("name")
@click.argument("label")
def functions_add_label(name: str, label: str) -> None:
    """Add LABEL to the live function NAME (Label Studio's label config and the registry).

    The label enters training once it has LOOPML_MIN_EXAMPLES_PER_LABEL annotated examples.
    """
    from loopml.evolution import add_label

    settings = get_settings()
    change = add_label(settings, name, label)
    click.echo(
        f"{change.describe()}\n  annotate at least {settings.min_examples_per_label} examples of {label!r} in "
        f"Label Studio; the next version will include it"
    )


@functions.command("remove-label")
@click.argument("name")
@click.argument("label")
def functions_remove_label(name: str, label: str) -> None:
    """Remove LABEL from function NAME: its annotations stay in Label Studio but leave the training data."""
    from loopml.evolution import remove_label

    change = remove_label(get_settings(), name, label)
    click.echo(f"{change.describe()}\n  annotations labelled {label!r} are excluded from the next version")


def _deployment_store(name: str) -> DeploymentStore:
    """The deployment store, after checking that function NAME exists (a clear error otherwise)."""
    from loopml.deployments import DeploymentStore
    from loopml.functions import FunctionRegistry

    settings = get_settings()
    FunctionRegistry(settings).get(name)
    return DeploymentStore(settings)


@main.command("deployments")
@click.argument("name")
@click.option("--limit", default=20, show_default=True, help="history entries to show")
def deployments_show(name: str, limit: int) -> None:
    """Show what serves function NAME and its deployment history (newest last)."""
    store = _deployment_store(name)
    state = store.get(name)
    if state is None:
        click.echo(f"{name}: nothing deployed yet (the first trained version becomes primary)")
        return
    canary = f", canary {state.canary_tag} at {state.canary_weight:.0%}" if state.canary_tag else ""
    click.echo(f"{name}: primary {state.primary_tag}{canary}")
    for event in store.history(name, limit=limit):
        click.echo(
            f"  {event.at:%Y-%m-%d %H:%M:%S}  {event.action:<9} primary={event.primary_tag} "
            f"canary={event.canary_tag or '-'}@{event.canary_weight:.0%}  by {event.actor}: {event.reason}"
        )


@main.command()
@click.argument("name")
@click.option("--reason", default="promoted by hand", show_default=True)
def promote(name: str, reason: str) -> None:
    """Make the canary of function NAME its primary now."""
    store = _deployment_store(name)
    state = store.promote(name, reason, actor="cli")
    click.echo(f"{name}: primary is now {state.primary_tag}")
    _echo_handover(store, name)


@main.command()
@click.argument("name")
@click.option("--reason", default="rolled back by hand", show_default=True)
def rollback(name: str, reason: str) -> None:
    """Drop the canary of function NAME; the primary serves everything."""
    store = _deployment_store(name)
    state = store.rollback(name, reason, actor="cli")
    click.echo(f"{name}: canary removed, primary {state.primary_tag} serves all traffic")
    _echo_handover(store, name)


def _echo_handover(store: DeploymentStore, name: str) -> None:
    """Say which waiting version the canary controller gates next, if any."""
    handover = store.pending_handover(name)
    if handover is not None:
        click.echo(
            f"{name}: {handover.waiting[-1]} waited for this rollout; the canary controller gates it within "
            "seconds (`loopml deployments` shows the decision)"
        )


@main.group()
def keys() -> None:
    """Create, list and revoke API keys for the serving API."""


@keys.command("create")
@click.argument("name")
@click.option(
    "--rights",
    default="invoke,feedback",
    show_default=True,
    help="comma-separated: invoke, feedback, hooks (Label Studio's webhook), admin (everything, /metrics too)",
)
@click.option(
    "--functions", default="*", show_default=True, help="comma-separated function names the key is allowed on (*: all)"
)
def keys_create(name: str, rights: str, functions: str) -> None:
    """Create an API key called NAME with RIGHTS on FUNCTIONS; the secret is shown once."""
    from loopml.apikeys import ApiKeyError, create_key

    settings = get_settings()
    settings.ensure_dirs()
    try:
        key_id, secret = create_key(
            settings,
            name,
            rights=[r.strip() for r in rights.split(",") if r.strip()],
            functions=[f.strip() for f in functions.split(",") if f.strip()],
        )
    except ApiKeyError as error:
        raise click.ClickException(str(error)) from None
    click.echo(
        f"created key {key_id} ({name}: {rights} on {functions}). Store the secret now, it is not shown again:\n"
        f"{secret}"
    )


@keys.command("list")
def keys_list() -> None:
    """List API keys (ids and names, never secrets)."""
    from loopml.apikeys import list_keys

    rows = list_keys(get_settings())
    if not rows:
        click.echo("no API keys; create one with `loopml keys create NAME`")
    for row in rows:
        revoked = f"revoked {row.revoked_at:%Y-%m-%d %H:%M}" if row.revoked_at else "active"
        click.echo(
            f"  {row.key_id:<14} {row.name:<24} created {row.created_at:%Y-%m-%d %H:%M}  {revoked:<24} "
            f"{row.rights} on {row.functions}"
        )


@keys.command("revoke")
@click.argument("key_id")
def keys_revoke(key_id: str) -> None:
    """Revoke the API key KEY_ID (calls with it get 401 from then on)."""
    from loopml.apikeys import revoke_key

    revoke_key(get_settings(), key_id)
    click.echo(f"revoked {key_id}")


def serving_client(url: str | None) -> Client:
    """The serving API's client for `invoke` and `feedback` (URL and key as :mod:`loopml.client` finds them)."""
    from loopml.client import Client

    return Client(url)


@contextmanager
def _serving_errors() -> Iterator[None]:
    """A failed call to the serving API as one line (the service's own explanation) and exit status 1."""
    from loopml.client import AuthenticationError, LoopMLError

    try:
        yield
    except AuthenticationError as error:
        raise click.ClickException(
            f"{error} (the CLI sends LOOPML_API_KEY, else the key `loopml demo` made; "
            "create one with `loopml keys create NAME`)"
        ) from None
    except LoopMLError as error:
        raise click.ClickException(str(error)) from None


URL_HELP = "the serving API [default: LOOPML_SERVING_URL, else http://127.0.0.1:LOOPML_SERVING_PORT]"


@main.command()
@click.argument("name")
@click.argument("texts", nargs=-1)
@click.option(
    "--file",
    "files",
    multiple=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="an image file to classify (image functions); repeat it for a batch",
)
@click.option("--sticky-key", default=None, help="route every call with this key to the same version, e.g. a user id")
@click.option("--json", "as_json", is_flag=True, help="print the service's JSON answer")
@click.option("--url", default=None, help=URL_HELP)
def invoke(
    name: str, texts: tuple[str, ...], files: tuple[Path, ...], sticky_key: str | None, as_json: bool, url: str | None
) -> None:
    """Classify texts or image files with function NAME through the serving API.

    Several TEXTS (or --file images) go as one batch; `-` reads a text per line of standard input. Prints a line
    per answer: label, confidence, version and invocation id (the id `loopml feedback` takes). The API key comes
    from LOOPML_API_KEY (else the key `loopml demo` made)."""
    import json

    if texts == ("-",):
        texts = tuple(line for line in sys.stdin.read().splitlines() if line.strip())
    if bool(texts) == bool(files):
        raise click.UsageError("give one or more texts, or one or more --file images (not both)")
    inputs = [str(path) for path in files] if files else list(texts)
    with serving_client(url) as client, _serving_errors():
        if len(texts) == 1:
            answers = [client.invoke(name, texts[0], sticky_key=sticky_key)]
        elif len(files) == 1:
            answers = [client.invoke(name, image=files[0], sticky_key=sticky_key)]
        elif texts:
            answers = client.invoke_batch(name, list(texts), sticky_key=sticky_key)
        else:
            answers = client.invoke_batch(name, images=list(files), sticky_key=sticky_key)
    if as_json:
        raw = answers[0].raw if len(inputs) == 1 else {"function": name, "results": [a.raw for a in answers]}
        click.echo(json.dumps(raw, indent=2))
        return
    for given, answer in zip(inputs, answers, strict=True):
        shown = f"{given[:37]}..." if len(given) > 40 else given
        lead = f"{shown!r:<44} " if len(inputs) > 1 else ""
        click.echo(
            f"{lead}{answer.label}  {answer.confidence:.2f}  {answer.version} ({answer.role})  "
            f"invocation {answer.invocation_id}"
        )


@main.command()
@click.argument("invocation_id")
@click.option("--label", default=None, help="the true label of the input (one of the function's labels)")
@click.option("--flag", is_flag=True, help="the answer was wrong (flagged answers go to human review)")
@click.option("--comment", default=None, help="free text for the reviewers")
@click.option("--url", default=None, help=URL_HELP)
def feedback(invocation_id: str, label: str | None, flag: bool, comment: str | None, url: str | None) -> None:
    """Send feedback on an answer: its true --label and/or --flag it as wrong.

    INVOCATION_ID is the id `loopml invoke` prints (the answer's `invocation_id`)."""
    if label is None and not flag:
        raise click.UsageError("give --label LABEL (the true label) and/or --flag (the answer was wrong)")
    with serving_client(url) as client, _serving_errors():
        recorded = client.feedback(invocation_id, label=label, flagged=flag, comment=comment)
    said = [f"true label {recorded.true_label}"] if recorded.true_label is not None else []
    said += ["flagged"] if recorded.flagged else []
    click.echo(
        f"feedback {recorded.feedback_id} recorded on {recorded.invocation_id} ({recorded.function}: "
        f"{recorded.answered_by} answered {recorded.answered_label}): {', '.join(said)}"
    )


@main.command("open")
@click.option("--browser", is_flag=True, help="also open them in the web browser")
def open_uis(browser: bool) -> None:
    """Print the URLs of Label Studio, Dagster and the serving API's docs (from the configured ports)."""
    import webbrowser

    settings = get_settings()
    pages = [
        ("Label Studio", settings.labelstudio_url),
        ("Dagster", settings.dagster_url),
        ("Serving API", f"{settings.serving_url}/docs"),
    ]
    for what, url in pages:
        click.echo(f"  {what:<13} {url}")
    if browser and not all([webbrowser.open(url) for _, url in pages]):
        raise click.ClickException("no web browser could be started here: open the URLs above by hand")


@main.command()
@click.option("--pace", default=1.0, show_default=True, help="seconds between simulated annotations")
@click.option("--items", default=2000, show_default=True, help="items imported per demo function")
@click.option("--noise", default=0.0, show_default=True, help="share of simulated annotations that are wrong")
@click.option("--annotator/--no-annotator", default=True, help="start the simulated annotator")
@click.option("--rate", default=20.0, show_default=True, help="calls a second from the simulated API client")
def demo(pace: float, items: int, noise: float, annotator: bool, rate: float) -> None:
    """Start the platform with two demo functions, a simulated annotator and a simulated API client."""
    from loopml.demo import setup_demo, start_annotator, start_client

    settings = get_settings()
    # the demo turns the whole loop in minutes: monitoring and review sampling every 5 minutes, not hourly
    os.environ.setdefault("LOOPML_MONITOR_CRON", "*/5 * * * *")
    start_platform(settings)
    setup_demo(settings, items=items, echo=_step)
    if annotator:
        start_annotator(settings, pace=pace, noise=noise)
        _step(
            f"simulated annotator labelling one task every {pace:g} s (log: {settings.run_dir / 'demo-annotator.log'})"
        )
    if rate > 0:
        start_client(settings, rate=rate, feedback=0.05)
        _step(f"simulated API client sending {rate:g} calls/s (log: {settings.run_dir / 'demo-client.log'})")
    print_urls(settings)
    click.echo("  Watch the loop turn in Dagster: Lineage (annotate -> train -> deploy -> serve -> review), or Runs.")
    click.echo("  Label Studio: unlabelled tasks carry the serving model's answer; calls picked for review arrive with")
    click.echo(
        "  a `review_reason`; likely label errors carry a `label-issue` prediction. Drift reports and review "
        "summaries: the `report_url` / `summary_url` links of the drift_report and review_set assets in Dagster, "
        f"or {settings.serving_url}/v1/functions/<name>/reports with an API key"
    )


@main.command("demo-client", hidden=True)
@click.option("--rate", default=5.0)
@click.option("--feedback", default=0.05)
def demo_client(rate: float, feedback: float) -> None:
    """Send simulated product traffic to the serving API (started by `loopml demo`)."""
    from loopml.demo import run_client

    run_client(get_settings(), rate=rate, feedback=feedback)


@main.command("demo-annotator", hidden=True)
@click.option("--pace", default=1.0)
@click.option("--noise", default=0.0)
def demo_annotator(pace: float, noise: float) -> None:
    """Run the simulated annotator in the foreground (started by `loopml demo`)."""
    from loopml.demo import run_annotator

    run_annotator(get_settings(), pace=pace, noise=noise)


def run() -> None:
    """Entry point with user-facing errors instead of tracebacks."""
    from loopml.deployments import DeploymentError
    from loopml.labelstudio import LabelStudioError, LabelStudioUnavailable

    try:
        main(standalone_mode=False)
    except click.exceptions.Abort:
        sys.exit(130)
    except click.ClickException as error:
        error.show()
        sys.exit(error.exit_code)
    except (FunctionError, DeploymentError, LabelStudioUnavailable, LabelStudioError, KeyError) as error:
        click.echo(click.style("error: ", fg="red") + str(error), err=True)
        sys.exit(2)


if __name__ == "__main__":
    run()
