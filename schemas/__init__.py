"""The input contract and the output tables: Spark schemas, keys and reason codes, in one place."""
