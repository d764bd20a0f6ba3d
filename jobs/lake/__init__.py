"""The table layer: Delta tables and their commits, publication, run logs, the lake lock, caches."""
