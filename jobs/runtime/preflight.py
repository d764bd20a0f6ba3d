"""Check the machine before setup: a supported Python and a Java for Spark. One sentence per problem.

Runs with any python3 and imports nothing from the project, so `make setup` can call it before the
virtual environment exists.
"""

import os
import shutil
import subprocess
import sys

SUPPORTED = ((3, 10), (3, 12))


def python_problem(version=None):
    v = tuple((version or sys.version_info)[:2])
    if SUPPORTED[0] <= v <= SUPPORTED[1]:
        return None
    return ("Python {}.{} is not supported: use Python 3.10, 3.11 or 3.12 (make setup PY=python3.11)."
            .format(*v))


def java_executable():
    """The java Spark will start: $JAVA_HOME/bin/java, else the one on PATH (None when neither exists)."""
    java_home = os.environ.get("JAVA_HOME")
    java = os.path.join(java_home, "bin", "java") if java_home else shutil.which("java")
    return java if java and os.path.exists(java) else None


def java_problem():
    java_home = os.environ.get("JAVA_HOME")
    java = java_executable()
    if not java:
        where = "JAVA_HOME={} has no bin/java".format(java_home) if java_home else "no 'java' on PATH"
        return ("Spark needs Java 17 or 21 ({}): install a JDK (apt-get install openjdk-17-jre-headless) "
                "or set JAVA_HOME.".format(where))
    try:
        out = subprocess.run([java, "-version"], capture_output=True, text=True, timeout=30).stderr
    except (OSError, subprocess.SubprocessError) as e:
        return "Spark needs Java 17 or 21, but {} -version failed: {}.".format(java, e)
    first = out.splitlines()[0] if out else ""
    for old in ('"1.', '"9', '"10', '"11', '"12', '"13', '"14', '"15', '"16'):
        if old in first:
            return "Spark 4 needs Java 17 or 21; {} is {}.".format(java, first.strip())
    return None


def main():
    problems = [p for p in (python_problem(), java_problem()) if p]
    for p in problems:
        print("error: " + p, file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
