"""Stores asset values under LOOPML_HOME/data: polars DataFrames as parquet, anything else as pickle."""

import io
import os
import pickle
from pathlib import Path
from typing import Any

import polars as pl
from dagster import ConfigurableIOManager, InputContext, OutputContext

from loopml.config import get_settings


def asset_path(data_dir: Path, asset: str, partition: str | None, suffix: str) -> Path:
    return data_dir / asset / f"{partition or '__all__'}{suffix}"


class LoopMLIOManager(ConfigurableIOManager):
    """Parquet for tables (readable with polars outside Dagster), pickle for small Python values."""

    home: str | None = None

    def _data_dir(self) -> Path:
        return (Path(self.home) if self.home else get_settings().home) / "data"

    def _path(self, context: InputContext | OutputContext, suffix: str) -> Path:
        partition = context.partition_key if context.has_partition_key else None
        return asset_path(self._data_dir(), context.asset_key.path[-1], partition, suffix)

    def handle_output(self, context: OutputContext, obj: Any) -> None:
        if obj is None:
            return
        is_frame = isinstance(obj, pl.DataFrame)
        path = self._path(context, ".parquet" if is_frame else ".pickle")
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        if is_frame:
            obj.write_parquet(tmp)
        else:
            tmp.write_bytes(pickle.dumps(obj))
        tmp.replace(path)
        context.add_output_metadata({"path": str(path)})

    def load_input(self, context: InputContext) -> Any:
        parquet = self._path(context, ".parquet")
        if parquet.exists():
            # the whole file in one read: polars reading a path (or a file object, by its name) opens it more than
            # once (footer, then pages), and a run that replaced the file in between (training writing the dataset
            # while inspection read it) failed with "page header reported the wrong page size" or a panic
            return pl.read_parquet(io.BytesIO(parquet.read_bytes()))
        pickled = self._path(context, ".pickle")
        if pickled.exists():
            return pickle.loads(pickled.read_bytes())
        raise FileNotFoundError(
            f"no stored value for {context.asset_key.to_user_string()} at {parquet}; materialize it first"
        )
