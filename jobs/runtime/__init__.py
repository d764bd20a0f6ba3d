"""The job's runtime: the SparkSession, the machine's preflight checks, stage progress."""
