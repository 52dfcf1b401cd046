"""The lifecycle as Dagster software-defined assets, one dynamic partition per function.

annotations -> dataset (+ Great Expectations checks) -> features -> model
"""
