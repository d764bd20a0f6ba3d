"""The read side without Spark: the similarity index and search, SQL, product lookups, the run report."""
