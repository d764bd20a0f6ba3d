"""The machine a local run starts on: the cores it may use and the driver JVM options sized for a few of them.

Imported by both :mod:`jobs.runtime.spark_session` and :mod:`jobs.runtime.jvm_cache` (whose class archive is
keyed by these options); it imports neither.
"""

from __future__ import annotations

import os

__all__ = ["FEW_CORES", "FEW_CORES_DEFAULTS", "cores", "local_java_options"]


def cores() -> int:
    try:
        return len(os.sched_getaffinity(0))   # the cores this process may use (a container's share)
    except AttributeError:
        return os.cpu_count() or 1


# Only for local mode on a few cores, where the JVM shares them with the Python workers' torch threads: the JIT's
# optimising compiler (C2) and a parallel garbage collector cost the JVM 45 s of CPU in a 100 s run of 20k
# products on 2 cores; the quick compiler alone (C1) and a serial collector, 24 s, and the run went from 108 to
# 94 s (bench/enrich_e2e.py). The JVM moves rows here; the models do the heavy work in Python. A spark-submit
# driver JVM is started before this code runs: pass them there as --driver-java-options. With C1 alone the JVM
# reserves only 48 MB for compiled code, which a 3,000-product run of the whole job in one process filled ("CodeCache
# is full. Compiler has been disabled": the JVM then interprets what it loads next); 240 MB is the size the default
# tiered JVM reserves.
FEW_CORES = 4
FEW_CORES_DEFAULTS: dict[str, str] = {
    "spark.driver.extraJavaOptions": "-XX:TieredStopAtLevel=1 -XX:+UseSerialGC -XX:ReservedCodeCacheSize=240m",
}


def local_java_options() -> str:
    """The driver JVM options a local run starts with on this machine ("" on more than :data:`FEW_CORES`)."""
    return FEW_CORES_DEFAULTS["spark.driver.extraJavaOptions"] if cores() <= FEW_CORES else ""
