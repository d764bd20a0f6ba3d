"""The lake's image stat cache: what the last runs saw of each image file, so unchanged files are not read.

    lake/_image_stats/CURRENT          the name of the live generation
    lake/_image_stats/<generation>/    Parquet: image_uri and the fields of udfs.images.STAT_SCHEMA

The cache only saves work: a missing, unreadable or stale cache means images are read and hashed again, never
a wrong hash (an entry is used only when the file's size, times and inode are unchanged; see
:class:`udfs.images.ImageStat`). ``--rehash-images`` ignores it for one run.
"""

from __future__ import annotations

import logging
import os
import shutil
import uuid
from pathlib import Path

from models.core.io import atomic_write
from udfs.images import STAT_FIELDS

__all__ = ["ImageStats"]

log = logging.getLogger(__name__)


class ImageStats:
    """The stat cache of one lake."""

    def __init__(self, lake_root: str | os.PathLike):
        self.root = Path(lake_root) / "_image_stats"

    def current(self) -> Path | None:
        try:
            gen = self.root / (self.root / "CURRENT").read_text().strip()
        except OSError:
            return None
        return gen if gen.name and gen.is_dir() else None

    def read(self, spark):
        """The cache as a DataFrame (``image_uri`` + the stat fields), or None when there is none."""
        gen = self.current()
        if gen is None:
            return None
        try:
            df = spark.read.parquet(str(gen))
            missing = [c for c in ("image_uri", *STAT_FIELDS) if c not in df.columns]
        except Exception as e:  # a damaged cache costs a re-read of the images, never the run
            log.warning("image stat cache %s is unreadable (%s); every image is read again", gen, e)
            return None
        if missing:
            log.warning("image stat cache %s lacks %s; every image is read again", gen, missing)
            return None
        return df.select("image_uri", *STAT_FIELDS)

    def write(self, validated) -> Path:
        """Replace the cache with the stats of ``validated`` (rows of :func:`jobs.stages.validate.validate`)."""
        from pyspark.sql import functions as F

        rows = (validated.where(F.col("_image_stat.image_checked_ns").isNotNull())
                .select("image_uri", *(F.col(f"_image_stat.{f}").alias(f) for f in STAT_FIELDS))
                .dropDuplicates(["image_uri"]))
        self.root.mkdir(parents=True, exist_ok=True)
        old = self.current()
        gen = self.root / f"gen-{uuid.uuid4().hex[:12]}"
        rows.coalesce(max(1, validated.rdd.getNumPartitions() // 8)).write.parquet(str(gen))
        atomic_write(self.root / "CURRENT", gen.name + "\n")   # readers see the old generation or the new one
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        return gen
