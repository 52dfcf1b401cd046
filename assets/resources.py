"""Resources: LoopML's settings, function registry and Label Studio client, in one place."""

import functools
import os
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from dagster import ConfigurableResource

from loopml.config import Settings, get_settings
from loopml.functions import FunctionRegistry

if TYPE_CHECKING:
    from loopml.labelstudio import LabelStudioClient


class LoopMLResource(ConfigurableResource):
    """Where LoopML keeps its data, and how to reach Label Studio. ``home`` overrides LOOPML_HOME."""

    home: str | None = None

    def settings(self) -> Settings:
        settings = get_settings()
        return replace(settings, home=Path(self.home).resolve()) if self.home else settings

    def registry(self) -> FunctionRegistry:
        return FunctionRegistry(self.settings())

    def labelstudio(self) -> "LabelStudioClient":
        from loopml.labelstudio import LabelStudioClient

        return LabelStudioClient.from_settings(self.settings())


LABELSTUDIO_RETRIES = 4  # waits of 10, 20, 40 and 80 s: a Label Studio restart or a burst of busy answers passes
FAILED_ON_TAG = "loopml/failed_on"  # set on a run whose step gave up on an unreachable Label Studio
RETRY_SECONDS_ENV = "LOOPML_LABELSTUDIO_RETRY_SECONDS"  # the first wait (default 10), doubling each time

F = TypeVar("F", bound=Callable[..., Any])


def retried_when_labelstudio_is_down(fn: F) -> F:
    """Decorates an asset that talks to Label Studio: when Label Studio cannot be reached (not running, timed
    out, busy after the client's own retries), the step is retried by Dagster with a doubling wait instead of
    failing the run; after the last attempt it fails with the reason. Use it only on assets that are safe to run
    again (reads, or writes that skip what is already in Label Studio)."""
    from dagster import RetryRequested

    @functools.wraps(fn)
    def wrapper(context: Any, *args: Any, **kwargs: Any) -> Any:
        from loopml.labelstudio import LabelStudioUnavailable

        try:
            return fn(context, *args, **kwargs)
        except LabelStudioUnavailable as error:
            attempt = context.retry_number
            if attempt >= LABELSTUDIO_RETRIES:
                # the annotation sensor asks for this function's training again once Label Studio is back
                context.instance.add_run_tags(context.run_id, {FAILED_ON_TAG: "labelstudio"})
                raise
            wait = float(os.environ.get(RETRY_SECONDS_ENV, "10")) * 2**attempt
            context.log.warning(f"{error}; retrying in {wait:.0f} s (retry {attempt + 1} of {LABELSTUDIO_RETRIES})")
            raise RetryRequested(max_retries=LABELSTUDIO_RETRIES, seconds_to_wait=wait) from error

    return wrapper  # type: ignore[return-value]
