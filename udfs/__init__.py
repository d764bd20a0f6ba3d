"""Pandas UDFs (iterator form) that run the encoders inside Spark's Python workers."""
