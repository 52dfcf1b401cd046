"""A small code location for the Celery worker tests: a job that records which process ran it."""

import os
import time

from dagster import Definitions, OpExecutionContext, in_process_executor, job, op


@op(config_schema={"seconds": float})
def sleep_then_tell(context: OpExecutionContext) -> int:
    """Sleep ``seconds`` (so a test can catch the run mid-way), then log the worker process's PID."""
    time.sleep(context.op_config["seconds"])
    context.log.info(f"ran in pid {os.getpid()}")
    return os.getpid()


@job(executor_def=in_process_executor, tags={"dagster/max_retries": 1})  # as the LoopML jobs
def nap() -> None:
    sleep_then_tell()


defs = Definitions(jobs=[nap])
