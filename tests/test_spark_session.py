"""The session a job builds under a real spark-submit: the submitter's settings win over the job's defaults."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]


def _spark_submit() -> Path:
    exe = Path(sys.executable).parent / "spark-submit"
    if not exe.exists():
        pytest.skip("no spark-submit beside this interpreter")
    return exe


def test_spark_submit_settings_are_kept_and_the_defaults_fill_the_rest(tmp_path):
    script = tmp_path / "show_conf.py"
    script.write_text(textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(ROOT)!r})
        from jobs.runtime.spark_session import build_session
        s = build_session("conf-check")
        for key in ("spark.sql.shuffle.partitions", "spark.python.daemon.module", "spark.sql.session.timeZone"):
            print("CONF", key, s.conf.get(key))
        s.stop()
    """))
    env = dict(os.environ, PYSPARK_PYTHON=sys.executable, PYSPARK_DRIVER_PYTHON=sys.executable)
    out = subprocess.run([str(_spark_submit()), "--master", "local[1]",
                          "--conf", "spark.sql.shuffle.partitions=7",
                          "--conf", "spark.python.daemon.module=pyspark.daemon", str(script)],
                         capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    conf = dict(line.split(" ", 2)[1:] for line in out.stdout.splitlines() if line.startswith("CONF "))
    assert conf["spark.sql.shuffle.partitions"] == "7"                # the submitter's, not one a core
    assert conf["spark.python.daemon.module"] == "pyspark.daemon"     # the submitter's, not the job's
    assert conf["spark.sql.session.timeZone"] == "UTC"                # unset by the submitter: the job's default


def test_the_class_archive_is_recorded_once_and_mapped_by_a_later_spark_submit(tmp_path, monkeypatch):
    from jobs.runtime.jvm_cache import build, launch

    submit = _spark_submit()
    monkeypatch.setenv("CATALOG_ENRICH_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("SPARK_CONF_DIR", raising=False)
    script = tmp_path / "job.py"
    script.write_text(textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(ROOT)!r})
        from jobs.runtime.spark_session import build_session
        s = build_session("archive-check")
        print("ROWS", s.range(1000).selectExpr("id % 7 AS k").groupBy("k").count().count())
        s.stop()
    """))
    options = "-XX:+UseSerialGC"
    archive = build(options, job=[str(script)], timeout=600)
    assert archive.is_file() and archive.parent == tmp_path / "cache" / "jvm"
    assert not list(archive.parent.glob(".*.partial"))       # recorded under a temporary name, then renamed
    mtime = archive.stat().st_mtime_ns
    assert build(options, job=[str(script)]) == archive and archive.stat().st_mtime_ns == mtime   # not redone

    how = launch(options)
    assert how.usable, how.problem
    loaded = tmp_path / "classes.log"
    env = dict(os.environ, **how.env, PYSPARK_PYTHON=sys.executable, PYSPARK_DRIVER_PYTHON=sys.executable,
               SPARK_SUBMIT_OPTS=f"{how.java_options} -Xlog:class+load=info:file={loaded}")
    out = subprocess.run([str(submit), "--master", "local[1]", str(script)], capture_output=True, text=True,
                         env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "ROWS 7" in out.stdout
    lines = loaded.read_text().splitlines()
    shared = sum("shared objects file (top)" in line for line in lines)
    from_jars = sum("source: jar:" in line or "source: file:" in line for line in lines)
    assert shared > 5000 and shared > 5 * from_jars, (shared, from_jars)   # Spark's classes came from the archive

    # A JVM that cannot map the archive (here: a class path that no longer matches it) starts without it, and
    # says so on stderr only: stdout is the job's, read by schedulers (a warning there once broke the run id).
    out = subprocess.run([str(submit), "--master", "local[1]", "--driver-class-path", str(tmp_path), str(script)],
                         capture_output=True, text=True, env=dict(env, SPARK_SUBMIT_OPTS=how.java_options), timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.splitlines() == ["ROWS 7"], out.stdout[-2000:]
    assert "Unable to use shared archive" in out.stderr


def test_the_class_archive_is_not_used_beside_a_users_spark_configuration(tmp_path, monkeypatch):
    from jobs.runtime import jvm_cache

    monkeypatch.setenv("CATALOG_ENRICH_CACHE", str(tmp_path / "cache"))
    archive = jvm_cache.archive_path("")
    if archive is None:
        pytest.skip("no java")
    archive.parent.mkdir(parents=True)
    archive.write_bytes(b"not read here")
    conf = tmp_path / "conf"
    conf.mkdir()
    monkeypatch.setenv("SPARK_CONF_DIR", str(conf))
    (conf / "log4j2.properties").write_text("rootLogger.level = warn\n")
    how = jvm_cache.launch("")
    assert how.usable and how.env["SPARK_CONF_DIR"] != str(conf)          # an empty folder instead
    assert f"-XX:SharedArchiveFile={archive}" in how.java_options
    assert "-Dlog4j2.configurationFile=file:" in how.java_options           # the quiet log kept
    (conf / "spark-defaults.conf").write_text("spark.executor.memory 2g\n")
    how = jvm_cache.launch("")
    assert not how.usable and "spark-defaults.conf" in how.problem and how.env == {}
    assert jvm_cache.archive_path("-XX:+UseSerialGC") != archive             # other JVM options, other archive


def test_the_class_archive_is_named_after_the_jars_location_and_times(tmp_path, monkeypatch):
    """The JVM maps an archive only for jars at the same paths with the same sizes and times; an archive
    recorded by another checkout (another venv, the same cache folder) must not be picked up."""
    from jobs.runtime import jvm_cache

    if jvm_cache.archive_path("") is None:
        pytest.skip("no java")
    monkeypatch.setenv("CATALOG_ENRICH_CACHE", str(tmp_path / "cache"))
    homes = []
    for name in ("a", "b"):
        jars = tmp_path / name / "jars"
        jars.mkdir(parents=True)
        (jars / "spark-core.jar").write_bytes(b"same bytes")
        os.utime(jars / "spark-core.jar", ns=(1_700_000_000_000_000_000,) * 2)
        homes.append(tmp_path / name)
    names = []
    for home in homes:
        monkeypatch.setenv("SPARK_HOME", str(home))
        names.append(jvm_cache.archive_path(""))
    assert names[0] != names[1]                                             # same jars, another folder
    os.utime(homes[1] / "jars" / "spark-core.jar", ns=(1_700_000_000_000_000_001,) * 2)
    assert jvm_cache.archive_path("") != names[1]                          # same folder, a jar rewritten


def _daemon_of_worker(_):
    import os as _os

    with open(f"/proc/{_os.getppid()}/cmdline", "rb") as f:
        return _os.getppid(), f.read().replace(b"\0", b" ").decode(), "torch" in sys.modules


def test_pandas_udfs_and_map_in_pandas_run_in_workers_of_one_preloading_daemon(spark):
    from pyspark.sql.functions import pandas_udf

    if not Path("/proc/self/cmdline").exists():
        pytest.skip("needs /proc")

    @pandas_udf("string")
    def where(ids: pd.Series) -> pd.Series:
        pid, cmd, torch_there = _daemon_of_worker(None)
        return pd.Series([f"{pid}|{cmd}|{torch_there}"] * len(ids))

    def where_batches(frames):
        for f in frames:
            pid, cmd, torch_there = _daemon_of_worker(None)
            yield pd.DataFrame({"w": [f"{pid}|{cmd}|{torch_there}"] * len(f)})

    seen = {r[0] for r in spark.range(4).select(where("id")).collect()}
    seen |= {r[0] for r in spark.range(4).mapInPandas(where_batches, "w string").collect()}
    daemons = {s.split("|")[0] for s in seen}
    # One daemon for both kinds of UDF: the match stage's mapInPandas reuses the workers of the embed stage.
    assert len(daemons) == 1, seen
    assert all("udfs.daemon" in s.split("|")[1] for s in seen), seen
    assert all(s.endswith("|True") for s in seen), seen    # torch came with the fork
    # Forked by a manager of the daemon the driver started early (udfs.daemon.start_early), not by Spark's launcher.
    from udfs.daemon import EARLY_SWITCH, early_supported

    if early_supported() and os.environ.get(EARLY_SWITCH, "1") != "0":
        assert all("udfs.daemon --early" in s.split("|")[1] for s in seen), seen


def test_workers_of_the_early_daemon_keep_sparks_thread_limits_and_environment(spark):
    """The early daemon imported torch and numpy with the driver's environment; its workers still run with the
    environment Spark gives them (its OMP_NUM_THREADS, the worker factory's secret, the hash seed)."""
    from pyspark.sql.functions import pandas_udf

    @pandas_udf("string")
    def seen(ids: pd.Series) -> pd.Series:
        import json
        import os as _os

        import torch
        from threadpoolctl import threadpool_info

        pools = sorted({p["num_threads"] for p in threadpool_info()})
        return pd.Series([json.dumps([_os.environ.get("OMP_NUM_THREADS"), torch.get_num_threads(), pools,
                                      "PYTHON_WORKER_FACTORY_SECRET" in _os.environ, hash("abc")])] * len(ids))

    rows = {r[0] for r in spark.range(4).select(seen("id")).collect()}
    for row in rows:
        omp, torch_threads, pools, secret, _ = json.loads(row)
        assert omp is not None and torch_threads == int(omp) and pools == [int(omp)], row
        assert secret
    assert len({json.loads(r)[4] for r in rows}) == 1   # one hash seed for every worker


def test_preload_skips_what_does_not_import():
    from udfs.daemon import preload

    took = preload(("json", "no_such_module_catalog_enrich"))
    assert took["no_such_module_catalog_enrich"] == -1.0 and took["json"] >= 0


def test_the_worker_warm_up_job_runs(spark):
    from jobs.runtime.spark_session import start_python_workers

    thread = start_python_workers(spark)
    thread.join(timeout=240)
    assert not thread.is_alive()
    assert thread.error is None, thread.error   # a UDF that fails to build would only be logged in a run


def test_the_daemon_takes_pyspark_zips_off_the_path_only_where_they_copy_the_installed_package(tmp_path,
                                                                                           pyspark_zips):
    """Spark puts ``pyspark.zip`` and the py4j zip first on the workers' path; where they lie inside the installed
    pyspark package they are dropped (the package imports instead), while another folder's archives stay."""
    zips = pyspark_zips
    elsewhere = tmp_path / "spark" / "python" / "lib"
    elsewhere.mkdir(parents=True)
    foreign = elsewhere / "pyspark.zip"
    foreign.write_bytes(Path(next(z for z in zips if z.endswith("pyspark.zip"))).read_bytes())
    script = ("import json, sys\nfrom udfs.daemon import prefer_installed_pyspark\n"
              "dropped = prefer_installed_pyspark()\nimport pyspark, py4j\n"
              "zips = [p for p in sys.path if p.endswith('.zip')]\n"
              "print(json.dumps([dropped, pyspark.__file__, py4j.__file__, zips]))")
    for path, expect_dropped in ((zips, zips), ([str(foreign), *zips], zips)):
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([*path, str(ROOT)]))
        out = subprocess.run([sys.executable, "-c", script], env=env, cwd=tmp_path, capture_output=True, text=True,
                             check=True).stdout
        dropped, spark_file, py4j_file, left = json.loads(out.splitlines()[-1])
        assert sorted(dropped) == sorted(expect_dropped)
        # the installed package imports, unless an archive of another Spark comes first: that one stays and wins
        assert spark_file.startswith(str(foreign)) if str(foreign) in path else ".zip" not in spark_file
        assert ".zip" not in py4j_file
        assert [p for p in left if p in path] == [p for p in path if p not in expect_dropped]
    # A process that has imported pyspark already keeps its path as it is.
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([*zips, str(ROOT)]))
    out = subprocess.run([sys.executable, "-c", "import pyspark\n" + script], env=env, cwd=tmp_path,
                         capture_output=True, text=True, check=True).stdout
    assert json.loads(out.splitlines()[-1])[0] == []


@pytest.mark.parametrize("script", ["jobs/enrich.py", "jobs/retrain.py"])
def test_the_spark_submit_scripts_import_the_installed_pyspark_not_the_archives(tmp_path, script, pyspark_zips):
    """spark-submit runs the driver's script with pyspark's and py4j's zips first on ``PYTHONPATH``; imported from
    there, pyspark is compiled from source in every run. The scripts take them off the path before they import
    pyspark, as the worker daemon does."""
    import pyspark

    zips = pyspark_zips
    # The script's own top level runs as spark-submit runs it (no package), under another name than __main__.
    probe = (f"import json, runpy, sys\nrunpy.run_path({str(ROOT / script)!r}, run_name='submitted')\n"
             "import pyspark, py4j\n"
             "print(json.dumps([pyspark.__file__, py4j.__file__, [p for p in sys.path if p.endswith('.zip')]]))")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(zips))
    out = subprocess.run([sys.executable, "-c", probe], env=env, cwd=tmp_path, capture_output=True, text=True,
                         check=True).stdout
    spark_file, py4j_file, left = json.loads(out.splitlines()[-1])
    assert spark_file == pyspark.__file__ and ".zip" not in py4j_file
    assert not set(left) & set(zips)


def test_python_workers_import_the_installed_pyspark_and_keep_no_archive_importer(spark):
    """No zip importer is left in a worker: each would read its archive's directory again on every task."""
    import pyspark
    from pyspark.sql.functions import pandas_udf

    @pandas_udf("string")
    def origin(ids: pd.Series) -> pd.Series:
        import sys as worker_sys

        import pyspark as worker_pyspark

        zipped = sorted(k for k, v in worker_sys.path_importer_cache.items() if type(v).__name__ == "zipimporter")
        return pd.Series([json.dumps([worker_pyspark.__file__, zipped])] * len(ids))

    seen = [json.loads(r[0]) for r in spark.range(2).select(origin("id")).collect()]
    assert {file for file, _ in seen} == {pyspark.__file__}
    assert [zipped for _, zipped in seen] == [[], []]


def test_workers_leave_the_preloaded_libraries_out_of_garbage_collection(spark):
    """pyspark's daemon collects garbage in a reused worker after every task; the objects the daemon imported are
    frozen before it forks, so that pass skips them (bench/worker_tasks.py: 0.2 s of CPU a task otherwise)."""
    from pyspark.sql.functions import pandas_udf

    @pandas_udf("long")
    def frozen(ids: pd.Series) -> pd.Series:
        import gc

        return pd.Series([gc.get_freeze_count()] * len(ids))

    counts = {r[0] for r in spark.range(2).select(frozen("id")).collect()}
    assert min(counts) > 100_000, counts   # torch, open_clip, transformers: about a million objects


def test_a_model_load_in_a_worker_is_frozen_out_of_garbage_collection(spark):
    """A worker that loads a model (udfs.model_cache.cached) freezes it and what it imported, and drops Spark's
    jar from its path: also where the worker was not forked from udfs.daemon (pyspark's own, on a cluster)."""
    import uuid

    from pyspark.sql.functions import pandas_udf

    token = uuid.uuid4().hex   # a key no earlier test loaded in these reused workers

    @pandas_udf("string")
    def probe(ids: pd.Series) -> pd.Series:
        import gc
        import sys as worker_sys

        from udfs.model_cache import cached

        before = gc.get_freeze_count()
        cached(("freeze-test", token), lambda: [[i] for i in range(50_000)])   # 50,000 objects the collector tracks
        jars = [k for k in worker_sys.path_importer_cache if ".jar" in k] + [p for p in worker_sys.path
                                                                           if p.endswith(".jar")]
        return pd.Series([json.dumps([before, gc.get_freeze_count(), jars])] * len(ids))

    seen = [json.loads(r[0]) for r in spark.range(0, 2, 1, 1).select(probe("id")).collect()]
    before, after, jars = seen[0]
    assert after - before >= 50_000 and jars == []
