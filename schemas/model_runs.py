"""The ``model_runs`` table (defined with the other tables in :mod:`schemas.tables`)."""

from schemas.tables import MODEL_RUNS

__all__ = ["MODEL_RUNS"]
