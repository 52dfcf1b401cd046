"""One dynamic partition per function, so the UI shows each function's lineage and history."""

from dagster import DynamicPartitionsDefinition

functions_partitions = DynamicPartitionsDefinition(name="functions")
