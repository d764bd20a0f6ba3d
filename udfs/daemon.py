"""Spark's Python worker daemon, with the model libraries imported once before it forks the workers.

Spark starts one daemon per executor (``spark.python.daemon.module``) and forks every Python worker from it.
Each worker that runs a model stage imports torch and open_clip first: 6-7 s on this project's 2-core machine
(open_clip alone pulls torchvision, torch._dynamo and transformers), and a small incremental run, whose stages
each fit in one task, paid it once per worker, in stage after stage. Imported here, before the fork, it is paid
once per executor, and the forked workers share the modules' memory until they write to it.

Only imports: no model is loaded and no thread is started here (a fork copies only the forking thread, so a
thread pool started before it would be left without its threads in the workers). A library that is missing
or fails to import is skipped: the worker that needs it imports it again and reports the error in its task.
``CATALOG_ENRICH_WORKER_PRELOAD=0`` turns the preloading off.

Before anything imports pyspark, :func:`prefer_installed_pyspark` takes pyspark's own zip archives off the path
where they are copies of the pyspark package installed beside them (a pip-installed pyspark runs its workers with
``<site-packages>/pyspark/python/lib/pyspark.zip`` first on ``PYTHONPATH``), and the Java jar Spark puts there
too. Every task a worker runs calls ``importlib.invalidate_caches()``, which makes each zip importer (one per
package directory imported from an archive) read its archive's whole directory again, and imported from a zip,
pyspark's modules are compiled from source in every process. ``python bench/worker_tasks.py`` measures what
that cost a task. The installed package has the same files, compiled once.

Last, the daemon imports with the garbage collector off and freezes what it imported (``gc.freeze``) before it
forks: pyspark's daemon collects garbage in a reused worker after every task, and a full collection over the
preloaded libraries cost 0.15-0.2 s of CPU per task. ``CATALOG_ENRICH_WORKER_TUNING`` = ``none`` (neither),
``path`` (the path only) or ``all`` (the default) is for the benchmark.

**Started early, by the driver** (local runs): Spark starts the daemon only when the first Python task needs a
worker, after its own start-up, so a cold run's first stage waited for the imports (3.3 s of one core on a 2-core
Zen 4). :func:`start_early` starts the same imports as soon as the driver's Python builds its session, beside the
JVM's start-up, in a process listening on a Unix socket in a private folder; the session passes that socket to
the workers' environment (:data:`EARLY_ENV`). When Spark launches ``python -m udfs.daemon``, it hands its standard
input, output and error and its environment to that process, which forks the manager with them: pyspark's own
daemon loop, run in a process that has imported everything already, talking to the JVM through the launcher's
pipes. The launcher lives as long as the manager and passes a SIGTERM on. Where anything of this fails (no socket,
another user's socket, no answer in :data:`EARLY_WAIT_S`), the launcher imports and serves by itself, as before.
The early process ends when the driver's Python does (its standard input closes), and removes its folder.
``CATALOG_ENRICH_EARLY_WORKERS=0`` turns it off.
"""

from __future__ import annotations

import importlib
import os
import sys
import time

__all__ = ["EARLY_ENV", "EARLY_SWITCH", "PRELOAD", "TUNING_ENV", "EarlyDaemon", "drop_java_archives",
           "early_supported", "main", "prefer_installed_pyspark", "preload", "preload_enabled", "start_early"]

TUNING_ENV = "CATALOG_ENRICH_WORKER_TUNING"
EARLY_ENV = "CATALOG_ENRICH_EARLY_DAEMON"      # in the workers' environment: the early daemon's socket
EARLY_SWITCH = "CATALOG_ENRICH_EARLY_WORKERS"  # "0": the driver starts no early daemon
EARLY_WAIT_S = 300.0                           # how long a launcher waits for the early daemon's imports

# What the enrich job's UDFs import (udfs.embed, udfs.heads, udfs.attributes, udfs.matching and their model
# loaders), heaviest first.
PRELOAD = ("torch", "open_clip", "pyarrow", "pandas", "udfs.embed", "udfs.heads", "udfs.attributes", "udfs.matching",
           "models.encoders", "models.attributes.extractor")


def preload(modules: tuple[str, ...] = PRELOAD) -> dict[str, float]:
    """Import ``modules``; returns the seconds each took (a failed one: -1.0)."""
    took = {}
    for name in modules:
        t = time.perf_counter()
        try:
            importlib.import_module(name)
        except Exception:   # noqa: BLE001 - the worker that needs it will raise the real error in its task
            took[name] = -1.0
            continue
        took[name] = round(time.perf_counter() - t, 2)
    return took


def prefer_installed_pyspark() -> list[str]:
    """Take off ``sys.path`` the archives that Spark put there and that only cost: pyspark's and py4j's zips where
    they lie inside the pyspark package that the other path entries already provide (its own copies: the pip
    layout, where ``SPARK_HOME`` is that package) and py4j is installed at the archive's version, and Java jars that
    hold no Python module (Spark adds ``spark-core_*.jar``: 5,358 entries, read again on every task). Their
    importers go from ``sys.path_importer_cache`` too: ``python -m udfs.daemon`` made them while it looked for
    ``udfs``. Returns the entries removed. Call before pyspark is imported; a Spark distribution's archives
    (outside any installed package) stay, and pyspark's zips stay when pyspark is imported already."""
    drop = [] if "pyspark" in sys.modules else _pyspark_copies()
    return _take_off_path(drop) + drop_java_archives()


def drop_java_archives() -> list[str]:
    """Take off ``sys.path`` (with their cached importers) the Java jars that hold no Python module; safe at any
    time, also in a worker that was not forked from this daemon (:func:`udfs.model_cache.cached` calls it there).
    Returns the entries removed."""
    return _take_off_path([p for p in sys.path if isinstance(p, str) and p.endswith(".jar") and not _holds_python(p)])


def _take_off_path(drop: list[str]) -> list[str]:
    if drop:
        sys.path[:] = [p for p in sys.path if p not in drop]
        for key in list(sys.path_importer_cache):
            if isinstance(key, str) and any(key == d or key.startswith(d + os.sep) for d in drop):
                del sys.path_importer_cache[key]
    return drop


def _pyspark_copies() -> list[str]:
    import importlib.machinery

    zips = [p for p in sys.path if isinstance(p, str) and p.endswith(".zip")
            and os.path.basename(p).startswith(("pyspark", "py4j-"))]
    if not zips:
        return []
    others = [p for p in sys.path if p not in zips]
    found = importlib.machinery.PathFinder.find_spec("pyspark", others)
    if found is None or not found.origin:
        return []
    package = os.path.realpath(os.path.dirname(found.origin))
    py4j = importlib.machinery.PathFinder.find_spec("py4j", others)
    py4j_version = None
    if py4j is not None and py4j.origin:
        version_file = os.path.join(os.path.dirname(py4j.origin), "version.py")
        if os.path.isfile(version_file):
            with open(version_file) as f:
                py4j_version = next((line.split("=")[1].strip().strip("'\"") for line in f
                                     if line.startswith("__version__")), None)
    inside = [p for p in zips if os.path.realpath(p).startswith(package + os.sep)]
    return [p for p in inside if os.path.basename(p).startswith("pyspark")
            or (py4j_version is not None and os.path.basename(p) == f"py4j-{py4j_version}-src.zip")]


def _holds_python(archive: str) -> bool:
    """Whether a zip archive on the path could provide a Python module (one unreadable counts as one)."""
    import zipfile

    try:
        with zipfile.ZipFile(archive) as z:
            return any(n.endswith((".py", ".pyc", ".so", ".pyd")) for n in z.namelist())
    except (OSError, zipfile.BadZipFile):
        return True


class EarlyDaemon:
    """The driver's handle on a daemon started early (:func:`start_early`); :meth:`stop` ends it."""

    def __init__(self, folder: str, path: str, process):
        self.folder = folder
        self.path = path   # its socket, in ``folder``
        self.process = process

    def stop(self, timeout: float = 10.0) -> None:
        """Close its standard input (it then removes its socket and exits), wait for it, remove the folder."""
        import shutil
        import subprocess

        try:
            if self.process.stdin is not None:
                self.process.stdin.close()
            self.process.wait(timeout=timeout)
        except (OSError, subprocess.TimeoutExpired):
            self.process.kill()
            self.process.wait()
        shutil.rmtree(self.folder, ignore_errors=True)


def early_supported() -> bool:
    """Whether this system has what the hand-over needs: Unix sockets that pass descriptors and tell the peer's
    user, and process descriptors to wait on (Linux)."""
    import socket

    return sys.platform.startswith("linux") and hasattr(os, "pidfd_open") and hasattr(socket, "SO_PEERCRED")


def start_early(env: dict[str, str], python: str | None = None) -> EarlyDaemon:
    """Start ``python -m udfs.daemon --early SOCKET``: it imports :data:`PRELOAD` now and then serves the
    launchers Spark starts (see the module doc). ``env``: its environment (the workers' own comes from each
    launcher). It ends when the returned handle's process loses its standard input: the driver's exit or
    :meth:`EarlyDaemon.stop`."""
    import subprocess
    import tempfile

    folder = tempfile.mkdtemp(prefix="catalog-enrich-daemon-")   # mode 0700: this user's only
    path = os.path.join(folder, "daemon.sock")
    process = subprocess.Popen([python or sys.executable, "-m", "udfs.daemon", "--early", path],
                               stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, env=env, close_fds=True)
    return EarlyDaemon(folder, path, process)


def _serve_early(path: str) -> None:
    """The early daemon: listen first (a launcher that comes during the imports waits for them), import, then fork
    one manager for each launcher that hands over its pipes, until standard input closes."""
    import select
    import signal
    import socket

    listen = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listen.bind(path)
    listen.listen(8)
    tuning = _import_before_forking("early worker daemon")
    _freeze_imported(tuning)
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)   # the managers are reaped as they end
    while True:
        ready = select.select([listen.fileno(), 0], [], [])[0]
        if 0 in ready and not os.read(0, 4096):   # the driver is gone
            listen.close()
            for remove, what in ((os.unlink, path), (os.rmdir, os.path.dirname(path))):
                try:
                    remove(what)
                except OSError:
                    pass
            os._exit(0)
        if listen.fileno() in ready:
            conn, _ = listen.accept()
            try:
                _fork_manager(conn, listen)
            except Exception as e:  # noqa: BLE001 - one bad launcher must not end the daemon: it serves itself
                sys.stderr.write(f"catalog-enrich early worker daemon: a launcher was not served: {e!r}\n")
            finally:
                conn.close()


def _fork_manager(conn, listen) -> None:
    """Receive a launcher's environment, arguments and three descriptors (stdin, stdout, stderr), fork, and in the
    child become pyspark's daemon manager on them once the launcher has said go."""
    import array
    import json
    import signal
    import socket
    import struct

    creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    if struct.unpack("3i", creds)[1] != os.getuid():
        raise PermissionError("a launcher of another user")
    conn.settimeout(10.0)
    fds = array.array("i")
    received, ancillary = b"", []
    while len(received) < 8 or len(received) < 8 + int.from_bytes(received[:8], "big"):
        data, anc, _, _ = conn.recvmsg(1 << 16, socket.CMSG_SPACE(3 * fds.itemsize))
        ancillary += anc
        if not data:
            break
        received += data
    for level, kind, payload in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(payload[:len(payload) - len(payload) % fds.itemsize])
    try:
        if len(fds) != 3:
            raise ValueError(f"{len(fds)} descriptors instead of 3")
        spec = json.loads(received[8:])
        if spec.get("python") != [sys.executable, sys.prefix, sys.version]:
            raise ValueError(f"a launcher of another Python ({spec.get('python')})")
        pid = os.fork()
    except BaseException:
        for fd in fds:
            os.close(fd)
        raise
    if pid:
        for fd in fds:
            os.close(fd)
        return
    try:   # the manager: from here on, only the launcher's descriptors and environment
        listen.close()
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        for target, fd in enumerate(fds):
            os.dup2(fd, target)
            os.close(fd)
        os.environ.clear()
        os.environ.update(spec["env"])
        sys.argv = list(spec["argv"])
        _path_of_the_launcher()
        _thread_limits_of_the_launcher()
        conn.settimeout(None)
        conn.sendall(f"{os.getpid()}\n".encode())
        if _read_until(conn, 2) != b"go":   # the launcher gave up waiting and serves by itself
            os._exit(0)
        conn.close()
        from pyspark import daemon

        daemon.manager()
        code = 0
    except SystemExit as e:   # pyspark's loop ends so (1 on a closed stdin or a SIGTERM, as a launched daemon)
        code = e.code if isinstance(e.code, int) else 1
    except BaseException:  # noqa: BLE001 - never return into the early daemon's loop in a child
        import traceback

        traceback.print_exc()
        code = 1
    os._exit(code)


def _path_of_the_launcher() -> None:
    """Put first on the path the launcher's ``PYTHONPATH`` entries (``--py-files`` among them) that the early
    daemon's path lacks, as a launcher's interpreter would have them, but not pyspark's and py4j's zips nor Java
    jars: the early daemon imported the installed pyspark already (:func:`prefer_installed_pyspark`)."""
    extra = []
    for entry in os.environ.get("PYTHONPATH", "").split(os.pathsep):
        name = os.path.basename(entry)
        if (not entry or entry in sys.path or entry in extra or entry.endswith(".jar")
                or (name.endswith(".zip") and name.startswith(("pyspark", "py4j-")))):
            continue
        extra.append(entry)
    sys.path[:0] = extra


def _thread_limits_of_the_launcher() -> None:
    """Size the thread pools of the libraries the early daemon imported (with the driver's environment) as Spark's
    environment for its workers says: Spark sets ``OMP_NUM_THREADS`` there, which OpenMP, OpenBLAS and torch
    read only when they load. Without this the workers ran torch and OpenBLAS on every core, where a daemon
    started by Spark gives them one thread each."""
    value = os.environ.get("OMP_NUM_THREADS", "")
    if not value.isdigit() or int(value) < 1:
        return
    try:
        from threadpoolctl import threadpool_limits

        threadpool_limits(limits=int(value))   # OpenMP and the BLAS libraries loaded; kept by the forked workers
    except ImportError:
        pass
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.set_num_threads(int(value))


def _appeared(path: str, wait_s: float = 10.0) -> bool:
    """Whether the early daemon's socket exists, waiting a little for it: the driver starts that daemon and goes
    on, and it binds its socket once its interpreter is up (about 0.1 s)."""
    deadline = time.monotonic() + wait_s
    while not os.path.exists(path):
        if time.monotonic() > deadline or not os.path.isdir(os.path.dirname(path)):
            return False
        time.sleep(0.02)
    return True


def _read_until(conn, most: int, end: bytes | None = None) -> bytes:
    """At most ``most`` bytes from ``conn``, up to ``end`` (not included) where given, or to its close."""
    got = b""
    while len(got) < most and not (end and got.endswith(end)):
        part = conn.recv(most - len(got))
        if not part:
            break
        got += part
    return got[:-len(end)] if end and got.endswith(end) else got


def _hand_over(path: str, wait_s: float = EARLY_WAIT_S) -> bool:
    """The launcher's side: hand the early daemon this process's environment, arguments and standard descriptors,
    then live as long as the manager it forks (passing SIGTERM on). False, with nothing handed over for good, where
    the early daemon cannot serve: the caller imports and serves by itself."""
    import json
    import select
    import signal
    import socket

    try:
        conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        conn.settimeout(wait_s)
        conn.connect(path)
        spec = json.dumps({"env": dict(os.environ), "argv": sys.argv,
                           "python": [sys.executable, sys.prefix, sys.version]}).encode()
        socket.send_fds(conn, [len(spec).to_bytes(8, "big") + spec], [0, 1, 2])
        pid = int(_read_until(conn, 24, b"\n"))
        pidfd = os.pidfd_open(pid)   # Linux 5.3 and later; start_early is not used elsewhere
        conn.sendall(b"go")
    except (OSError, ValueError, AttributeError):
        return False
    conn.close()

    def stop(*_):
        try:
            os.kill(pid, signal.SIGTERM)
        except OSError:
            pass
        os._exit(0)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGHUP, stop)
    select.select([pidfd], [], [])   # the manager has ended
    return True


def preload_enabled() -> bool:
    """Whether the daemon imports :data:`PRELOAD` before it forks (``CATALOG_ENRICH_WORKER_PRELOAD=0``: no)."""
    return os.environ.get("CATALOG_ENRICH_WORKER_PRELOAD", "1") != "0"


def _import_before_forking(who: str) -> str:
    """What a daemon does before its first fork, launched by Spark or started early: the path, the imports with the
    collector off, as ``CATALOG_ENRICH_WORKER_TUNING`` says. Returns that tuning (:func:`_freeze_imported`)."""
    import gc

    tuning = os.environ.get(TUNING_ENV, "all")   # none | path | all: what bench/worker_tasks.py compares
    if tuning in ("path", "all"):
        prefer_installed_pyspark()
    if tuning == "all":
        # No collection while the libraries import: they allocate about half a million objects that all live on,
        # and the passes the allocator triggers over them cost 0.7 s of CPU (of 4.9) on the run's critical path.
        gc.disable()
    if preload_enabled():
        # stdout carries the daemon's port to the JVM: nothing else may be written there.
        took = preload()
        if os.environ.get("CATALOG_ENRICH_WORKER_PRELOAD_LOG"):
            sys.stderr.write(f"catalog-enrich {who} {os.getpid()}: imported {took}\n")
    return tuning


def _freeze_imported(tuning: str) -> None:
    import gc

    if tuning == "all":
        # pyspark's daemon runs gc.collect() in a reused worker after every task: with the preloaded libraries
        # that is a full pass over about half a million objects, 0.15-0.2 s of CPU a task, which also writes to
        # every page the fork shared. Frozen here, before the first fork, they are left out of every collection;
        # the workers collect their own objects as usual.
        gc.freeze()
        gc.enable()


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] == "--early":
        _serve_early(sys.argv[2])
        return
    early = os.environ.get(EARLY_ENV)
    if early and _appeared(early) and _hand_over(early):
        return
    tuning = _import_before_forking("worker daemon")
    from pyspark import daemon

    _freeze_imported(tuning)
    daemon.manager()


if __name__ == "__main__":
    main()
