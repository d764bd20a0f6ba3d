"""Build what spark-submit ships to a cluster: the project's packages as a zip for ``--py-files``, and a
launcher script; optionally a packed virtual environment for ``--archives``.

    python -m jobs.package [--out dist]          dist/catalog_enrich.zip + dist/catalog_enrich_main.py
    python -m jobs.package --env [--out dist]    also dist/catalog_enrich-env.tar.gz (venv-pack; minutes, GBs)

The zip holds the packages ``jobs``, ``udfs``, ``models`` and ``schemas`` and their small data files, but not
the model store (models live on shared storage: pass ``--model``/``--model-store``) nor the sample catalog.
Entries are sorted and dated 1980-01-01, so the same sources give the same bytes; ``BUILD.json`` inside
records the version, the git commit and a digest of the sources. The cluster's Python must already hold the
third-party dependencies (``constraints.txt``), or ship them with ``--env``.

The launcher dispatches to the ``catalog-enrich`` command (``enrich``, ``retrain``, ``quality``,
``publish``): ``spark-submit --py-files dist/catalog_enrich.zip dist/catalog_enrich_main.py enrich ...``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import re
import subprocess
import sys
import zipfile
from pathlib import Path

__all__ = ["ARCHIVE", "LAUNCHER", "PACKAGES", "build_env", "build_zip", "main", "zip_members"]

log = logging.getLogger("jobs.package")   # the module name, also under python -m

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("jobs", "udfs", "models", "schemas")
ARCHIVE = "catalog_enrich.zip"
LAUNCHER = "catalog_enrich_main.py"
ENV_ARCHIVE = "catalog_enrich-env.tar.gz"
# Data that stays out of the zip: the model store (shared storage) and the demo's sample catalog.
EXCLUDED_DIRS = ("models/store", "jobs/sample_catalog")
DATA_SUFFIXES = (".json", ".properties")
_EPOCH = (1980, 1, 1, 0, 0, 0)

LAUNCHER_TEXT = '''"""spark-submit entry point of catalog-enrich; the packages come from --py-files {archive}.

    spark-submit --py-files {archive} {launcher} enrich|retrain|quality|publish [options]
"""

import sys

from udfs.daemon import prefer_installed_pyspark

# spark-submit puts pyspark's zips first on the path; where they copy an installed pyspark, that one imports
# (compiled once, not from the zip's source in every run).
prefer_installed_pyspark()

from jobs.cli import main  # noqa: E402

if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
'''


def zip_members(root: Path = REPO) -> list[Path]:
    """The files that go into the zip, relative to ``root``, sorted."""
    out = []
    for pkg in PACKAGES:
        for path in (root / pkg).rglob("*"):
            rel = path.relative_to(root)
            if not path.is_file() or "__pycache__" in rel.parts:
                continue
            if any(rel.as_posix().startswith(d + "/") for d in EXCLUDED_DIRS):
                continue
            if path.suffix == ".py" or path.suffix in DATA_SUFFIXES:
                out.append(rel)
    return sorted(out, key=lambda p: p.as_posix())


def _git_commit(root: Path) -> str:
    try:
        return subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                              check=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _version(root: Path) -> str:
    # tomllib is 3.11+ and the project supports 3.10: the version line is simple enough to read directly.
    m = re.search(r'^version\s*=\s*"([^"]+)"', (root / "pyproject.toml").read_text(), re.M)
    return m.group(1) if m else "unknown"


def build_zip(out: Path, root: Path = REPO) -> Path:
    """Write ``out/catalog_enrich.zip`` and the launcher; return the zip's path."""
    out.mkdir(parents=True, exist_ok=True)
    members = zip_members(root)
    digest = hashlib.sha256()
    for rel in members:
        digest.update(rel.as_posix().encode() + b"\0" + (root / rel).read_bytes() + b"\0")
    build = {"version": _version(root), "git_commit": _git_commit(root), "sources_sha256": digest.hexdigest(),
             "files": len(members)}
    tmp = out / f".{ARCHIVE}.tmp"
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for rel in members:
            info = zipfile.ZipInfo(rel.as_posix(), _EPOCH)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            zf.writestr(info, (root / rel).read_bytes())
        info = zipfile.ZipInfo("BUILD.json", _EPOCH)
        zf.writestr(info, json.dumps(build, indent=2, sort_keys=True) + "\n")
    target = out / ARCHIVE
    tmp.replace(target)  # a DAG run starting now sees the old zip or the new one, never half of one
    (out / LAUNCHER).write_text(LAUNCHER_TEXT.format(archive=ARCHIVE, launcher=LAUNCHER))
    log.info("wrote %s (%d files, sources %s) and %s", target, len(members), build["sources_sha256"][:12],
             out / LAUNCHER)
    return target


def build_env(out: Path, root: Path = REPO, python: str = sys.executable, extras: str = "") -> Path:
    """Pack a virtual environment holding the project and its pinned dependencies (venv-pack) for
    ``--archives dist/catalog_enrich-env.tar.gz#environment``. Needs the package index; takes minutes."""
    venv = root / "build" / "env"
    subprocess.run([python, "-m", "venv", "--clear", str(venv)], check=True)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", "-c", str(root / "constraints.txt")]
    subprocess.run([*pip, f"{root}{extras}", "venv-pack"], check=True)
    target = out / ENV_ARCHIVE
    subprocess.run([str(venv / "bin" / "venv-pack"), "-p", str(venv), "-o", str(target), "--force"], check=True)
    return target


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    p = argparse.ArgumentParser(prog="python -m jobs.package", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=str(REPO / "dist"), help="output folder (default: dist/)")
    p.add_argument("--env", action="store_true", help="also pack a virtual environment for --archives")
    a = p.parse_args(argv)
    out = Path(a.out)
    print(build_zip(out))
    print(out / LAUNCHER)
    if a.env:
        print(build_env(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
