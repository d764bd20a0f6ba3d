"""The nightly case of issue 21: a fresh ``spark-submit`` of a small change against a fresh one of the whole catalog.

    python bench/cold_increments.py --products 20000 --increments 3

1. The synthetic catalog of ``bench/enrich_e2e.py`` (realistic titles, JPEGs, planted duplicates).
2. The driver JVM's class archive is recorded (``python -m jobs.runtime.jvm_cache build``; untimed, its
   seconds printed) unless ``--no-archive``.
3. A cold full run of the default job into a fresh lake, as ``bench/enrich_e2e.py`` starts it (a fresh
   ``spark-submit`` process, wall clock from start to exit), on the archive.
4. ``--increments`` rounds, each with ``--changed`` (1%) more of the titles changed from the lake's last state:
   one cold run on the archive and one without it, alternating which goes first, each on the lake the runs
   before it left (so the two see the same kind of change, side by side on the same machine load).

Printed: per run the wall seconds and the stages of its run report; the median increment of each kind, its
fraction of the cold full run (issue 21's target: <= 0.1) and the archive's saving. ``--full-without-archive``
also times a cold full run without the archive (a second fresh lake), for the full run's side of the saving.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import median, scratch  # noqa: E402
from bench.e2e_catalog import changed_copy, make_catalog  # noqa: E402
from bench.enrich_e2e import Settings, cold_run  # noqa: E402


def _next_change(catalog: Path, fraction: float, k: int) -> tuple[Path, int]:
    out, n = changed_copy(catalog, fraction, seed=100 + k)
    return out.replace(out.with_name(f"catalog_inc{k}.parquet")), n


def _stages(run: dict) -> str:
    return ", ".join(f"{k} {v:.1f}" for k, v in run["stages"].items())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--products", type=int, default=3000)
    ap.add_argument("--image-size", type=int, default=256)
    ap.add_argument("--increments", type=int, default=3, help="rounds of one run with and one without the archive")
    ap.add_argument("--changed", type=float, default=0.01)
    ap.add_argument("--no-archive", action="store_true", help="every run without the JVM class archive")
    ap.add_argument("--full-without-archive", action="store_true")
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--json", default=None)
    a = ap.parse_args(argv)

    from jobs.runtime.jvm_cache import build
    from jobs.runtime.machine import local_java_options

    st = Settings()
    with scratch(a.workdir) as tmp:
        work = Path(tmp)
        t = time.perf_counter()
        catalog = make_catalog(work / "catalog", a.products, a.image_size)
        print(f"catalog: {a.products} listings, made in {time.perf_counter() - t:.0f} s", flush=True)
        archive = not a.no_archive
        if archive:
            t = time.perf_counter()
            path = build(local_java_options())
            print(f"JVM class archive {path}: ready in {time.perf_counter() - t:.0f} s (untimed)", flush=True)
        lake = work / "lake"
        full = cold_run(catalog, lake, "cold-full", st, work / "full.log", jvm_archive=archive)
        print(f"cold full, archive {'on' if archive else 'off'}: {full['seconds']:.1f} s ({_stages(full)})",
              flush=True)
        full_plain = None
        if archive and a.full_without_archive:
            full_plain = cold_run(catalog, work / "lake-plain", "cold-full-plain", st, work / "full-plain.log")
            shutil.rmtree(work / "lake-plain", ignore_errors=True)
            print(f"cold full, archive off: {full_plain['seconds']:.1f} s ({_stages(full_plain)})", flush=True)
        runs: dict[bool, list[dict]] = {True: [], False: []}
        current = catalog
        for k in range(a.increments):
            order = [True, False] if k % 2 == 0 else [False, True]
            for use in (order if archive else [False]):
                current, n = _next_change(current, a.changed, 2 * k + int(use))
                r = cold_run(current, lake, f"cold-inc-{k}-{'archive' if use else 'plain'}", st,
                             work / f"inc-{k}-{use}.log", jvm_archive=use)
                if r["enriched"] != n:
                    raise RuntimeError(f"increment {k} enriched {r['enriched']} products, {n} changed")
                runs[use].append(r)
                print(f"cold increment {k + 1}, archive {'on' if use else 'off'}, {n} changed: {r['seconds']:.1f} s "
                      f"({r['seconds'] / full['seconds']:.3f} of the full run; {_stages(r)})", flush=True)
    out = {"products": a.products, "full_seconds": full["seconds"], "full_stages": full["stages"],
           "full_without_archive_seconds": full_plain["seconds"] if full_plain else None}
    for use, name in ((True, "archive"), (False, "plain")):
        if runs[use]:
            m = median([r["seconds"] for r in runs[use]])
            out[f"increments_{name}"] = [r["seconds"] for r in runs[use]]
            out[f"median_increment_{name}"] = m
            out[f"median_fraction_{name}"] = round(m / full["seconds"], 3)
            print(f"median cold increment, archive {'on' if use else 'off'}: {m:.1f} s = "
                  f"{m / full['seconds']:.3f} of the cold full run ({full['seconds']:.1f} s)")
    if runs[True] and runs[False]:
        print(f"archive / no archive, median increment: "
              f"{out['median_increment_archive'] / out['median_increment_plain']:.2f}")
    if a.json:
        Path(a.json).write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
