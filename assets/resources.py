"""Resources: LoopML's settings, function registry and Label Studio client, in one place."""


from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

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
