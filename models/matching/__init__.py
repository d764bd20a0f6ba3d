"""Product matching without Spark: pair features, the calibrated pair scorer, blocking and clustering.

The Spark job (:mod:`jobs.stages.matching`) runs these pieces per partition; :mod:`models.matching.evaluate`
measures them on the shared benchmarks; :func:`models.matching.train.train_pair_scorer` retrains the scorer.
"""
