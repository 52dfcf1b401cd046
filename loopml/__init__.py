"""LoopML's pure domain logic: no Dagster or BentoML imports live in this package.

Assets (``assets/``), sensors and schedules (``pipelines/``) and the HTTP service (``serving/``) are thin
adapters over the modules here.
"""

__version__ = "0.1.0"
