"""Pandas UDFs (iterator form) that run the encoders inside Spark's Python workers, their per-worker model
cache, and the first-attempt task faults the reliability tests inject (task_faults.py). Imports only models/
and schemas/."""
