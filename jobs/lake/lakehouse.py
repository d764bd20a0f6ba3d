"""The table layer: Delta tables whose data Spark writes and whose log the driver commits.

There are no Delta jars for Spark here (no Maven), so the work is split the way Delta's own writers split
it: Spark executors write Parquet data files in parallel into a fresh folder inside the table, and the
driver commits them to the transaction log with the ``deltalake`` package (add and remove actions in one
atomic commit). The driver handles file names and counts only; it never collects table rows.

Every commit carries an application transaction ``(app_id, version)`` where the app id names the table
and the run and the version numbers the commit within the run. A commit whose transaction the log already
holds is skipped, so re-running a run that crashed after committing changes nothing.

Readers see exactly the files in the log: :meth:`Lake.read` lists them from the log (never by globbing
the folder), so files of an unfinished or failed write are invisible.

Each committed file carries Delta column statistics (min, max, null count of the key and scalar columns, from
its Parquet footer: :mod:`jobs.lake.delta_stats`), so readers skip files, and a driver-side upsert reads only the
files whose key range can hold a changed key.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import shutil
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote

from jobs.lake import delta_stats
from models.core.errors import CatalogEnrichError
from models.core.faults import checkpoint
from models.core.io import local_path
from schemas.tables import TableSpec

__all__ = ["CommitResult", "Lake", "LakeError", "app_id_for"]

log = logging.getLogger(__name__)

_SAFE = re.compile(r"[^A-Za-z0-9_.-]+")
TARGET_FILE_BYTES = 64 * 1024 * 1024   # an upsert rewrites the files it touches into files of at most this size
MIN_FILE_BYTES = 4 * 1024 * 1024       # ... and of at least this size, unless that leaves a core idle
DRIVER_REWRITE_BYTES = 1024 ** 3       # Lake.upsert(on_driver=True) rewrites files on the driver up to this table size
# Parquet row groups of Spark's writes. The writer holds a whole row group of each task in the heap (Parquet's
# default 128 MB) and copies its pages once more as it flushes them: a partition of 17,000 embeddings (78 MB)
# was held whole, two tasks at a time, and with Spark's default 1 GiB driver the first run of 50,000 products
# ran out of heap writing them. Row groups of 16 MB read back as fast (a reader reads whole files here).
ROW_GROUP_BYTES = 16 * 1024 * 1024


def rewrite_files(rewritten_bytes: int, parallelism: int) -> int:
    """How many files an upsert writes for the rows of the files it rewrites: one per core while each gets at
    least ``MIN_FILE_BYTES`` (a 40 MB rewrite by one task took 10 s, by eight 6.5 s), more only beyond
    ``TARGET_FILE_BYTES`` each; a small rewrite becomes one file, so incremental runs compact the table."""
    return max(1, min(parallelism, math.ceil(rewritten_bytes / MIN_FILE_BYTES)),
               math.ceil(rewritten_bytes / TARGET_FILE_BYTES))


class LakeError(CatalogEnrichError, RuntimeError):
    """A table cannot be read or written as asked."""


@dataclass(frozen=True)
class CommitResult:
    table: str
    version: int | None        # table version after the commit; None when nothing was committed
    added_files: int
    removed_files: int
    skipped: bool = False      # True when the log already held this run's commit

    @property
    def committed(self) -> bool:
        return self.version is not None and not self.skipped


def app_id_for(table: str, run_id: str) -> str:
    return f"catalog-enrich:{table}:{run_id}"


def _local_path(uri: str) -> str:
    try:
        return local_path(uri, "lake")
    except ValueError:
        raise LakeError(f"only local or mounted paths are supported for now, not {uri!r}") from None


class Lake:
    """The Delta tables under one root directory (``--lake``)."""

    def __init__(self, spark, root: str | os.PathLike):
        self.spark = spark
        self.root = Path(_local_path(str(root))).expanduser().resolve()

    # -- paths and creation ---------------------------------------------------------------------------
    def path(self, spec: TableSpec) -> Path:
        return self.root / spec.name

    def arrow_schema(self, spec: TableSpec):
        # Delta columns are all nullable here: Spark writes optional Parquet fields whatever the DataFrame
        # says, and the not-null rules are checked by validation, not by the storage format.
        import pyarrow as pa
        from pyspark.sql.pandas.types import to_arrow_schema

        schema = to_arrow_schema(spec.schema)  # timestamps as UTC microseconds, as Delta stores them
        return pa.schema([f.with_nullable(True) for f in schema])

    def ensure(self, spec: TableSpec):
        """Open the table, creating it (empty, with the spec's schema) if it does not exist."""
        from deltalake import DeltaTable, Schema

        path = self.path(spec)
        if DeltaTable.is_deltatable(str(path)):
            return DeltaTable(str(path))
        path.mkdir(parents=True, exist_ok=True)
        return DeltaTable.create(
            str(path), schema=Schema.from_arrow(self.arrow_schema(spec)), mode="ignore",
            partition_by=list(spec.partition_by) or None, name=spec.name, description=spec.doc,
            configuration={delta_stats.STATS_COLUMNS_PROPERTY: ",".join(delta_stats.stats_columns(spec))},
        )

    def _ensure_stats_columns(self, spec: TableSpec, dt):
        """Add the spec's columns that a table made by an older release lacks (nullable; its old files read them
        as null), and name the statistics columns on a table created before files carried statistics (one
        metadata commit each, once): ``deltalake`` readers must know which columns the files' statistics cover."""
        from deltalake import DeltaTable, Schema

        have = {f.name for f in dt.schema().fields}
        missing = [f for f in Schema.from_arrow(self.arrow_schema(spec)).fields if f.name not in have]
        if missing:
            if any(not f.nullable for f in missing):
                raise LakeError(f"{spec.name}: cannot add required columns {[f.name for f in missing]} to an "
                                "existing table")
            dt.alter.add_columns(missing)
            log.info("%s: added columns %s", spec.name, ", ".join(f.name for f in missing))
            dt = DeltaTable(str(self.path(spec)))
        wanted = ",".join(delta_stats.stats_columns(spec))
        if dt.metadata().configuration.get(delta_stats.STATS_COLUMNS_PROPERTY) == wanted:
            return dt
        dt.alter.set_table_properties({delta_stats.STATS_COLUMNS_PROPERTY: wanted}, raise_if_not_exists=False)
        log.info("%s: statistics columns set to %s", spec.name, wanted)
        return DeltaTable(str(self.path(spec)))

    def exists(self, spec: TableSpec) -> bool:
        from deltalake import DeltaTable

        return DeltaTable.is_deltatable(str(self.path(spec)))

    # -- reading ---------------------------------------------------------------------------------------
    def files(self, spec: TableSpec) -> dict[str, int]:
        """The table's live data files as ``{relative path: size}``, from the log."""
        return self._files_of(self.ensure(spec))

    @staticmethod
    def _files_of(dt) -> dict[str, int]:
        actions = dt.get_add_actions(flatten=True)
        cols = actions.column_names if hasattr(actions, "column_names") else actions.schema.names
        if "path" not in cols:
            return {}
        paths = [str(p) for p in actions.column("path").to_pylist()]
        sizes = [int(s) for s in actions.column("size_bytes").to_pylist()]
        return dict(zip(paths, sizes, strict=True))

    def _check_readable(self, dt) -> None:
        features = set(dt.protocol().reader_features or [])
        unsupported = features & {"deletionVectors", "columnMapping"}
        if unsupported:
            raise LakeError(f"table {dt.table_uri} uses {sorted(unsupported)}, which this reader does not support")

    def _readable_files(self, spec: TableSpec) -> list[str]:
        """Absolute paths of the table's live data files, after checking that this reader can read it (the
        table's log opened once)."""
        dt = self.ensure(spec)
        self._check_readable(dt)
        base = self.path(spec)
        return [str(base / unquote(p)) for p in self._files_of(dt)]

    def read(self, spec: TableSpec):
        """The table as a Spark DataFrame over exactly the files in its log."""
        files = self._readable_files(spec)
        if not files:
            return self.spark.createDataFrame([], spec.schema)
        return self.spark.read.schema(spec.schema).parquet(*files)

    def read_arrow(self, spec: TableSpec, columns: list[str] | None = None, where=None):
        """The table as a pyarrow Table on the driver, over exactly the files in its log: for a small table or
        a few columns that the driver needs whole (no Spark job, no row-by-row conversion of array columns).
        ``where``: a ``pyarrow.dataset`` expression the files' rows are filtered by."""
        import pyarrow.dataset as ds

        if spec.partition_by:
            raise LakeError(f"{spec.name}: read_arrow does not read partitioned tables")
        schema = self.arrow_schema(spec)
        files = self._readable_files(spec)
        if not files:
            empty = schema.empty_table()
            return empty.select(columns) if columns else empty
        return ds.dataset(files, schema=schema, format="parquet").to_table(columns=columns, filter=where)

    # -- writing ---------------------------------------------------------------------------------------
    def append(self, spec: TableSpec, df, run_id: str, step: int = 1) -> CommitResult:
        """Add ``df``'s rows to the table in one commit."""
        return self._write(spec, df, run_id, step, upsert=False)

    def upsert(self, spec: TableSpec, df, run_id: str, step: int = 1, replaced=None, delete=None,
               on_driver: bool = False, cache: bool = True) -> CommitResult:
        """Insert or replace rows by the spec's key columns (``replace_by`` when set), in one commit
        (copy-on-write).

        Only data files that hold a key of ``df`` are rewritten: their other rows are carried over into
        the new files, and the old files are removed in the same commit. ``df`` must not hold a key twice.
        ``replaced``: a DataFrame of match keys whose old rows go even when ``df`` has no new row for them
        (a re-enriched product that no longer has any attribute); default: the keys of ``df``.
        ``delete``: a DataFrame of further match keys whose rows are removed in the same commit (pairs that
        are no longer matches).
        ``on_driver``: the caller knows the update is small (an incremental run): it is collected as Arrow and
        committed by :meth:`upsert_arrow`, which skips the Spark jobs of a distributed rewrite (five jobs a
        table, however few the rows); the keys of ``delete`` go with ``replaced`` there (their old rows go, no
        new row comes). Ignored when the table holds more than ``DRIVER_REWRITE_BYTES``, where rewriting its
        touched files is work for the cluster.
        ``cache``: the Spark path reads ``df`` twice (the keys, then the rows) and caches it first; False where
        ``df`` is a cheap projection of a frame the caller has persisted already. A second cache of wide rows
        (the embeddings' three float arrays) is then no copy in the executors' heap: building one ran a 1 GiB
        local driver out of memory at 50,000 products.
        """
        if on_driver and self.rewritable_on_driver(spec):
            cols, keys = list(spec.column_names), list(spec.match_keys)
            gone = None
            if replaced is not None or delete is not None:
                gone = (df if replaced is None else replaced).select(*keys)
                if delete is not None:
                    gone = gone.unionByName(delete.select(*keys))
                gone = gone.distinct().toArrow()
            return self.upsert_arrow(spec, df.select(*cols).toArrow(), run_id, step, replaced=gone)
        return self._write(spec, df, run_id, step, upsert=True, replaced=replaced, delete=delete, cache=cache)

    def rewritable_on_driver(self, spec: TableSpec) -> bool:
        """Whether :meth:`upsert_arrow` may rewrite the table's touched files on the driver: the whole table
        holds at most ``DRIVER_REWRITE_BYTES``."""
        return sum(self.files(spec).values()) <= DRIVER_REWRITE_BYTES

    def upsert_rows(self, spec: TableSpec, rows: list[dict], run_id: str, step: int = 1) -> CommitResult:
        """:meth:`upsert_arrow` for a handful of rows given as dicts (a run's record)."""
        import pyarrow as pa

        table = pa.Table.from_pylist([{c: r.get(c) for c in spec.column_names} for r in rows],
                                     schema=self.arrow_schema(spec))
        return self.upsert_arrow(spec, table, run_id, step)

    def upsert_arrow(self, spec: TableSpec, table, run_id: str, step: int = 1, replaced=None) -> CommitResult:
        """:meth:`upsert` for an update held on the driver as a ``pyarrow.Table``: the same copy-on-write
        commit, with the touched files rewritten by pyarrow instead of Spark jobs.

        A one-row upsert through Spark ran five jobs (find the files, read, anti-join, write) and took about
        2 s; this reads the key columns of each live file whose statistics allow a changed key (the files'
        min/max of the first match key), then rewrites only the files that hold a key, one at a time
        (memory: one data file). ``replaced``: a table of match keys whose old rows go too.
        """
        import pyarrow as pa
        import pyarrow.parquet as pq

        schema = self.arrow_schema(spec)
        missing = [c for c in spec.column_names if c not in table.column_names]
        if missing:
            raise LakeError(f"rows for {spec.name} lack the columns {missing}")
        new = table.select(spec.column_names).cast(schema)
        dt, app_id, done = self._open_for(spec, run_id, step)
        if done is not None:
            return done
        keys = list(spec.match_keys)
        wanted = _key_values(new if replaced is None else replaced.select(keys), keys)
        if replaced is not None:
            wanted = pa.concat_arrays([wanted, _key_values(new, keys)])
        wanted = wanted.unique()

        removed: dict[str, int] = {}
        if len(wanted):
            live = self.files(spec)
            first = schema.field(keys[0]).type
            changed = [t.column(keys[0]).cast(first).combine_chunks() for t in (new, replaced) if t is not None]
            candidates = self._candidates(spec, dt, pa.concat_arrays(changed))
            log.debug("%s: %d of %d files may hold a changed key", spec.name, len(candidates), len(live))
            for rel in candidates:
                size = live[rel]
                held = pq.read_table(self._abs(spec, rel), columns=keys)
                if not _not_in(_key_values(held, keys), wanted).to_numpy(zero_copy_only=False).all():
                    removed[rel] = size

        def write(target: Path) -> None:
            target.mkdir(parents=True)
            with _RollingWriter(target, schema) as out:
                out.write(new)
                for rel in removed:  # the other rows of each touched file, carried over
                    old = pq.read_table(self._abs(spec, rel), schema=schema)
                    out.write(old.filter(_not_in(_key_values(old, keys), wanted)))

        return self._write_and_commit(spec, dt, write, removed, run_id, app_id, step)

    def _write(self, spec: TableSpec, df, run_id: str, step: int, upsert: bool, replaced=None, delete=None,
               cache: bool = True) -> CommitResult:
        missing = [c for c in spec.column_names if c not in df.columns]
        if missing:
            raise LakeError(f"rows for {spec.name} lack the columns {missing}")
        df = df.select(*spec.column_names)
        dt, app_id, done = self._open_for(spec, run_id, step)
        if done is not None:
            return done

        removed: dict[str, int] = {}
        if upsert:
            # The updates are read twice (to find the files they touch, then to write): compute them once,
            # unless the caller already cached them (Spark warns "Asked to cache already cached data").
            from pyspark import StorageLevel

            if cache and df.storageLevel == StorageLevel.NONE:
                df = df.persist(StorageLevel.MEMORY_AND_DISK)
            keys = (df if replaced is None else replaced).select(*spec.match_keys)
            if delete is not None:
                keys = keys.unionByName(delete.select(*spec.match_keys))
            keys = keys.distinct()
            removed = self._files_holding(spec, keys)
            if removed:
                old = self.spark.read.schema(spec.schema).parquet(*(self._abs(spec, p) for p in removed))
                df = df.unionByName(old.join(keys, list(spec.match_keys), "left_anti").select(*spec.column_names))
                # The union has the new rows' partitions plus one per rewritten file: without this the table
                # would gain files on every run (8, 16, 24, ...) and never compact.
                df = df.coalesce(rewrite_files(sum(removed.values()), self.spark.sparkContext.defaultParallelism))

        return self._write_and_commit(spec, dt, lambda target: df.write.mode("errorifexists")
                                      .option("parquet.block.size", str(ROW_GROUP_BYTES)).parquet(str(target)),
                                      removed, run_id, app_id, step)

    def _open_for(self, spec: TableSpec, run_id: str, step: int):
        """``(table, app id, skipped result)``: the result is set when the log already holds this commit."""
        dt = self.ensure(spec)
        app_id = app_id_for(spec.name, run_id)
        done = dt.transaction_version(app_id)
        if done is not None and done >= step:
            log.info("%s: commit %d of run %s is already in the log; skipped", spec.name, step, run_id)
            return dt, app_id, CommitResult(spec.name, dt.version(), 0, 0, skipped=True)
        return self._ensure_stats_columns(spec, dt), app_id, None

    def _write_and_commit(self, spec: TableSpec, dt, write: Callable[[Path], None], removed: dict[str, int],
                          run_id: str, app_id: str, step: int) -> CommitResult:
        """``write`` data files into a fresh folder of the table, then commit them with the ``removed`` files."""
        from deltalake import DeltaTable

        folder = f"run-{_SAFE.sub('_', run_id)[:80]}-{step}-{uuid.uuid4().hex[:8]}"
        target = self.path(spec) / folder
        try:
            write(target)
            point = spec.name if step == 1 else f"{spec.name}/{step}"
            checkpoint(f"written:{point}")   # data files on disk, not yet in the log
            adds = self._add_actions(spec, folder)
            if not adds and not removed:
                shutil.rmtree(target, ignore_errors=True)
                return CommitResult(spec.name, None, 0, 0)
            self._commit(spec, dt, adds, removed, app_id, step)
            checkpoint(f"committed:{point}")
        except Exception:
            # The files were never referenced by the log, so readers never saw them; tidy up.
            shutil.rmtree(target, ignore_errors=True)
            raise
        version = DeltaTable(str(self.path(spec))).version()
        log.info("%s: committed version %d (+%d files, -%d files)", spec.name, version, len(adds), len(removed))
        return CommitResult(spec.name, version, len(adds), len(removed))

    def _candidates(self, spec: TableSpec, dt, values) -> list[str]:
        """Live files whose statistics allow one of ``values`` in the first match key (every live file when a
        value is null; each file without statistics)."""
        key = spec.match_keys[0]
        actions = dt.get_add_actions(flatten=True)
        names = set(actions.schema.names)
        if "path" not in names:
            return []
        paths = [str(p) for p in actions.column("path").to_pylist()]
        if values.null_count or f"min.{key}" not in names:
            return paths
        lows, highs = actions.column(f"min.{key}").to_pylist(), actions.column(f"max.{key}").to_pylist()
        bounds = {p: (lo, hi) for p, lo, hi in zip(paths, lows, highs, strict=True)}
        return delta_stats.candidate_files(bounds, values.unique().to_pylist())

    def _abs(self, spec: TableSpec, rel: str) -> str:
        return str(self.path(spec) / unquote(rel))

    def _files_holding(self, spec: TableSpec, df) -> dict[str, int]:
        """Live files that contain at least one key of ``df`` (a distributed semi-join; file names only)."""
        from pyspark.sql import functions as F

        live = self.files(spec)
        if not live:
            return {}
        by_abs = {os.path.normpath(self._abs(spec, rel)): rel for rel in live}
        existing = (self.spark.read.schema(spec.schema).parquet(*by_abs)
                    .select(*spec.match_keys, F.col("_metadata.file_path").alias("_file")))
        hits = (existing.join(df.select(*spec.match_keys), list(spec.match_keys), "left_semi")
                .select("_file").distinct())
        touched: dict[str, int] = {}
        for row in hits.collect():  # one row per touched file, not per table row
            rel = by_abs.get(os.path.normpath(_local_path(row["_file"])))
            if rel is None:
                raise LakeError(f"Spark read a file that is not in the log of {spec.name}: {row['_file']}")
            touched[rel] = live[rel]
        return touched

    def _add_actions(self, spec: TableSpec, folder: str):
        import pyarrow.parquet as pq
        from deltalake.transaction import AddAction

        adds = []
        base = self.path(spec) / folder
        columns = delta_stats.stats_columns(spec)
        for f in sorted(base.iterdir()):
            if f.name.startswith((".", "_")) or not f.name.endswith(".parquet"):
                f.unlink()  # checksum files and markers of the local Hadoop file system
                continue
            meta = pq.read_metadata(f)  # the footer only: row count and column statistics
            if meta.num_rows == 0:
                f.unlink()
                continue
            st = f.stat()
            adds.append(AddAction(
                path=f"{folder}/{f.name}", size=st.st_size, partition_values={},
                modification_time=int(st.st_mtime * 1000), data_change=True,
                stats=json.dumps(delta_stats.file_stats(f, meta, columns)),
            ))
        return adds

    def _commit(self, spec: TableSpec, dt, adds, removed: dict[str, int], app_id: str, step: int) -> None:
        from deltalake import CommitProperties, Schema, Transaction
        from deltalake.transaction import RemoveAction

        now = int(time.time() * 1000)
        removes = [RemoveAction(path=p, data_change=True, deletion_timestamp=now, size=s, partition_values={})
                   for p, s in removed.items()]
        dt.create_write_transaction(
            [*adds, *removes], mode="append", schema=Schema.from_arrow(self.arrow_schema(spec)),
            partition_by=list(spec.partition_by) or None,
            commit_properties=CommitProperties(
                app_transactions=[Transaction(app_id=app_id, version=step)],
                custom_metadata={"catalog_enrich.app_id": app_id, "catalog_enrich.step": step},
                max_commit_retries=0,  # a concurrent change to the same files must fail, not be merged over
            ),
        )



def _key_values(table, keys: list[str]):
    """One array of match-key values: the column itself for one key, the columns joined for several."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if len(keys) == 1:
        return table.column(keys[0]).combine_chunks()
    parts = [pc.cast(table.column(k), pa.string()).combine_chunks() for k in keys]
    return pc.binary_join_element_wise(*parts, "\x1f")


def _not_in(values, wanted):
    import pyarrow.compute as pc

    return pc.invert(pc.fill_null(pc.is_in(values, value_set=wanted), False))


class _RollingWriter:
    """Parquet files of about ``TARGET_FILE_BYTES`` each (judged by in-memory size) under one folder."""

    def __init__(self, folder: Path, schema):
        self.folder, self.schema = folder, schema
        self.writer, self.bytes, self.files = None, 0, 0

    def write(self, table) -> None:
        import pyarrow.parquet as pq

        if table.num_rows == 0:
            return
        if self.writer is not None and self.bytes + table.nbytes > TARGET_FILE_BYTES:
            self.close()
        writer = self.writer
        if writer is None:
            name = f"part-{self.files:05d}-{uuid.uuid4()}.snappy.parquet"
            writer = self.writer = pq.ParquetWriter(self.folder / name, self.schema, compression="snappy")
            self.files += 1
        writer.write_table(table)
        self.bytes += table.nbytes

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.writer, self.bytes = None, 0

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()
