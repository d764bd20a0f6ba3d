"""Entry points: spark-submit jobs, the ``catalog-enrich`` command, the artifact build. The machinery they drive
lives in lake/ (tables), stages/ (what a run does), read/ (queries) and runtime/ (Spark)."""
