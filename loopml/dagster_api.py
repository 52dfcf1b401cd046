"""The few calls LoopML's CLI makes to a running Dagster webserver, over its GraphQL HTTP API."""

from __future__ import annotations

import requests

LOCATION = "loopml"
REPOSITORY = "__repository__"
PARTITIONS = "functions"

ADD_PARTITION = """
mutation AddPartition($selector: RepositorySelector!, $name: String!, $key: String!) {
  addDynamicPartition(repositorySelector: $selector, partitionsDefName: $name, partitionKey: $key) {
    __typename
    ... on PythonError { message }
    ... on UnauthorizedError { message }
  }
}
"""


def add_function_partition(dagster_url: str, function: str, timeout_s: float = 10.0) -> bool:
    """Add the function's partition now; False when Dagster is not reachable (the sensor adds it later)."""
    payload = {
        "query": ADD_PARTITION,
        "variables": {
            "selector": {"repositoryLocationName": LOCATION, "repositoryName": REPOSITORY},
            "name": PARTITIONS,
            "key": function,
        },
    }
    try:
        response = requests.post(f"{dagster_url}/graphql", json=payload, timeout=timeout_s)
        response.raise_for_status()
    except requests.RequestException:
        return False
    result = response.json().get("data", {}).get("addDynamicPartition") or {}
    kind = result.get("__typename")
    if kind in ("AddDynamicPartitionSuccess", "DuplicateDynamicPartitionError"):
        return True
    raise RuntimeError(f"Dagster refused to add partition {function!r}: {result.get('message', result)}")
