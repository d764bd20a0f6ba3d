"""Entry points (spark-submit jobs, the command line) and the driver-side table layer."""
