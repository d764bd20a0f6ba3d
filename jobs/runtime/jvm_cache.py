"""A class-data-sharing archive of the Spark driver JVM, so that a cold start maps Spark's classes from one file.

A fresh driver JVM loads, parses and verifies several thousand classes from Spark's jars before and during its
first jobs. On this project's 2-core machine, three fresh ``spark-submit`` increments of the sample catalog (6
products changed) took a median 56.8 s without the archive and 48.9 s with it, alternating (BENCHMARKS.md).
Java 17's dynamic archive (``-XX:ArchiveClassesAtExit``) records the classes one run loaded; later JVMs started
with ``-XX:SharedArchiveFile`` map them instead of loading them. The archive is a cache: it lives in the user's cache
folder (``$CATALOG_ENRICH_CACHE``, else ``$XDG_CACHE_HOME/catalog-enrich``, else ``~/.cache/catalog-enrich``), is
named after the Java and Spark it was made for, and a JVM that cannot use it (another Java, another class path)
says so in one warning line and runs as before.

One condition from the JVM: no folder on the class path may hold files. Spark puts its configuration folder
there, and ``make setup`` puts the project's quiet ``log4j2.properties`` in pyspark's. So the archive is used
with an empty configuration folder and that file named by ``-Dlog4j2.configurationFile``; where the
configuration folder holds anything else (a user's ``spark-defaults.conf``), the archive is not used.

    python -m jobs.runtime.jvm_cache build [--force]   run the sample catalog once to record the archive
    python -m jobs.runtime.jvm_cache status            where the archive is, and whether it can be used
    eval "$(python -m jobs.runtime.jvm_cache env)"     then ``spark-submit jobs/enrich.py ...`` uses it

Jobs started in-process (``catalog-enrich enrich``, ``python jobs/enrich.py``) use an existing archive by
themselves (:func:`jobs.runtime.spark_session.build_session`); ``CATALOG_ENRICH_JVM_CACHE=0`` turns that off.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from jobs.runtime.machine import local_java_options
from jobs.runtime.preflight import java_executable
from models.core.io import cache_root

__all__ = ["Launch", "archive_path", "build", "cache_root", "enabled", "launch", "main", "spark_home", "submit_env"]

REPO = Path(__file__).resolve().parents[2]
LOG4J = "log4j2.properties"
# The JVM's own warnings (one is an archive it cannot map) go to stderr. Its default is stdout, where the job's
# result line is read by schedulers and scripts. Placed before the caller's options, so a caller's -Xlog still holds.
JVM_LOG_TO_STDERR = "-Xlog:disable -Xlog:all=warning:stderr"


def spark_home() -> Path:
    if os.environ.get("SPARK_HOME"):
        return Path(os.environ["SPARK_HOME"])
    import pyspark

    return Path(pyspark.__file__).resolve().parent


def archive_path(java_options: str = "") -> Path | None:
    """Where the archive for this Java, these Spark jars and these JVM options lives (None: no Java found)."""
    found = java_executable()
    if found is None:
        return None
    java = Path(found).resolve()
    h = hashlib.sha256()
    st = java.stat()
    h.update(f"{java}|{st.st_size}|{st.st_mtime_ns}|{java_options}".encode())
    jars = (spark_home() / "jars").resolve()
    h.update(f"|{jars}".encode())   # the JVM checks each jar's path, size and mtime before mapping
    for jar in sorted(jars.glob("*.jar")):
        st = jar.stat()
        h.update(f"|{jar.name}:{st.st_size}:{st.st_mtime_ns}".encode())
    return cache_root() / "jvm" / f"spark-driver-{h.hexdigest()[:16]}.jsa"


def _conf_dir() -> Path:
    return Path(os.environ.get("SPARK_CONF_DIR") or spark_home() / "conf")


@dataclass(frozen=True)
class Launch:
    """How to start a driver JVM with the archive: extra environment and JVM options, or why not."""

    archive: Path | None
    env: dict[str, str]
    java_options: str
    problem: str | None = None

    @property
    def usable(self) -> bool:
        return self.problem is None


def launch(java_options: str = "", record: Path | None = None) -> Launch:
    """The settings that start a driver JVM on the archive (``record``: that record a new archive there)."""
    archive = archive_path(java_options)
    if archive is None:
        return Launch(None, {}, "", "no java found")
    if record is None and not archive.is_file():
        return Launch(archive, {}, "", f"no archive yet at {archive} (python -m jobs.runtime.jvm_cache build)")
    conf = _conf_dir()
    files = sorted(p.name for p in conf.iterdir()) if conf.is_dir() else []
    if set(files) - {LOG4J}:
        return Launch(archive, {}, "", f"the Spark configuration folder {conf} holds {', '.join(files)}: the JVM "
                                       "shares classes only when the folders on its class path are empty")
    empty = cache_root() / "jvm" / "empty-conf"
    empty.mkdir(parents=True, exist_ok=True)
    opts = [f"-XX:SharedArchiveFile={archive}" if record is None else f"-XX:ArchiveClassesAtExit={record}"]
    if LOG4J in files:
        opts.append(f"-Dlog4j2.configurationFile={(conf / LOG4J).as_uri()}")
    options = " ".join([JVM_LOG_TO_STDERR, java_options, *opts]).strip()
    return Launch(archive, {"SPARK_CONF_DIR": str(empty)}, options)


def enabled() -> bool:
    """False where ``CATALOG_ENRICH_JVM_CACHE=0`` turns the archive off for the job's driver JVMs."""
    return os.environ.get("CATALOG_ENRICH_JVM_CACHE", "1") != "0"


def submit_env() -> tuple[dict[str, str], str | None]:
    """The environment that starts a ``spark-submit``'s driver JVM on the archive (for this machine's local JVM
    options), and None; or {} and why not (``CATALOG_ENRICH_JVM_CACHE=0``, no archive yet, a Spark conf folder)."""
    if not enabled():
        return {}, "CATALOG_ENRICH_JVM_CACHE=0"
    how = launch(local_java_options())
    if not how.usable:
        return {}, how.problem
    return {**how.env, "SPARK_SUBMIT_OPTS": how.java_options}, None


def build(java_options: str = "", force: bool = False, job: list[str] | None = None,
          timeout: float = 1800) -> Path:
    """Record the archive by running ``job`` (default: the enrich job on the shipped sample catalog, into a
    scratch lake) in a fresh ``spark-submit``; returns its path. Written under a temporary name and renamed, so
    a failed or concurrent build never leaves a half-written archive where a JVM would map it."""
    archive = archive_path(java_options)
    if archive is None:
        raise RuntimeError("no java found: Spark needs Java 17 or 21")
    if archive.is_file() and not force:
        return archive
    archive.parent.mkdir(parents=True, exist_ok=True)
    submit = Path(sys.executable).parent / "spark-submit"
    if not submit.exists():
        found = shutil.which("spark-submit")
        if found is None:
            raise RuntimeError("no spark-submit beside this Python or on PATH")
        submit = Path(found)
    with tempfile.TemporaryDirectory(prefix="jvm-cache-") as tmp:
        partial = archive.with_name(f".{archive.name}.{os.getpid()}.partial")
        how = launch(java_options, record=partial)
        if not how.usable:
            raise RuntimeError(how.problem)
        job = job or [str(REPO / "jobs" / "enrich.py"), "--lake", str(Path(tmp) / "lake"), "--run-id", "jvm-cache"]
        env = dict(os.environ, **how.env, PYSPARK_PYTHON=sys.executable, PYSPARK_DRIVER_PYTHON=sys.executable)
        cmd = [str(submit), "--driver-java-options", how.java_options, *job]
        log = Path(tmp) / "build.log"
        with open(log, "w") as out:
            rc = subprocess.run(cmd, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT, timeout=timeout
                                ).returncode
        if rc != 0 or not partial.is_file():
            partial.unlink(missing_ok=True)
            raise RuntimeError(f"recording the JVM archive failed (exit {rc}):\n{log.read_text()[-2000:]}")
        os.replace(partial, archive)
    return archive


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m jobs.runtime.jvm_cache", description=__doc__.split("\n")[0])
    p.add_argument("command", choices=("build", "status", "env"))
    p.add_argument("--force", action="store_true", help="build: record the archive again")
    a = p.parse_args(argv)
    opts = local_java_options()
    if a.command == "build":
        t = time.perf_counter()
        print("recording the driver JVM's class archive: one run of the sample catalog (about 2 minutes)",
              file=sys.stderr, flush=True)
        try:
            path = build(opts, force=a.force)
        except (RuntimeError, OSError, subprocess.SubprocessError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
        print(f"JVM class archive {path} ({path.stat().st_size / 2**20:.0f} MB; {time.perf_counter() - t:.0f} s)")
        return 0
    if a.command == "status":
        how = launch(opts)
        print(f"archive: {how.archive}\nusable: {'yes' if how.usable else 'no: ' + str(how.problem)}")
        return 0 if how.usable else 1
    env, problem = submit_env()
    if problem is not None:   # env: nothing to export; say why on stderr, so `eval` stays harmless
        print(f"# JVM class archive not used: {problem}", file=sys.stderr)
        return 1
    for k, v in env.items():
        print(f"export {k}={shlex.quote(v)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
