"""The cluster artifact: what goes into the zip, that the same sources give the same bytes, and that the
packages work when imported from the zip alone (as spark-submit --py-files puts them on the path)."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import zipfile

from jobs.package import ARCHIVE, LAUNCHER, build_zip, zip_members


def test_zip_holds_the_packages_and_their_configs_but_not_the_store_or_sample():
    names = {p.as_posix() for p in zip_members()}
    assert {"jobs/cli.py", "jobs/enrich.py", "jobs/quality.py", "udfs/embed.py", "schemas/expectations.py",
            "models/configs/catalog-tiny-minilm.json", "models/training/pipeline.py"} <= names
    assert not any(n.startswith(("models/store/", "jobs/sample_catalog/")) or "__pycache__" in n for n in names)
    assert not any(n.startswith(("tests/", "airflow/")) for n in names)


def test_same_sources_same_bytes(tmp_path):
    a = build_zip(tmp_path / "a").read_bytes()
    b = build_zip(tmp_path / "b").read_bytes()
    assert hashlib.sha256(a).digest() == hashlib.sha256(b).digest()
    with zipfile.ZipFile(tmp_path / "a" / ARCHIVE) as zf:
        build = json.loads(zf.read("BUILD.json"))
    assert build["files"] == len(zip_members()) and len(build["sources_sha256"]) == 64
    assert "from jobs.cli import main" in (tmp_path / "a" / LAUNCHER).read_text()


def test_packages_import_and_read_their_data_from_the_zip(tmp_path):
    zpath = build_zip(tmp_path / "dist")
    code = ("import json, jobs.cli, models.refs\n"
            "from models.training.pipeline import candidate_config\n"
            "from models.heads.adult import TermList\n"
            "from jobs.stages.heads import resolve_extractor\n"
            "from jobs.stages.matching import resolve_matching\n"
            "assert resolve_extractor('auto') is None and resolve_matching('auto') is None  # no store in the zip\n"
            "ref = models.refs.parse_model_ref('builtin:catalog-tiny-minilm')\n"
            "terms = TermList.load().match('ein Erotik Artikel')\n"
            "proj = candidate_config()['text_cfg']['hf_proj_type']\n"
            "print(json.dumps([jobs.cli.__file__, ref.version, proj, terms]))")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = str(zpath)  # the zip and the installed third-party packages, not the checkout
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    cli_file, version, proj, terms = json.loads(out.stdout.strip().splitlines()[-1])
    assert cli_file.startswith(str(zpath)) and version.startswith("catalog-tiny-minilm@cfg-") and proj == "mlp"
    assert terms and terms[0].startswith("erotic:")          # the shipped term list, read from inside the zip


def test_the_launcher_imports_the_installed_pyspark_not_spark_submits_archives(tmp_path, pyspark_zips):
    """spark-submit runs the launcher with pyspark's zips first on PYTHONPATH, the project's zip after them; the
    launcher takes the zips that copy the installed pyspark off the path before anything imports pyspark."""
    import pyspark

    zips = pyspark_zips
    zpath = build_zip(tmp_path / "dist")
    probe = (f"import json, runpy, sys\nrunpy.run_path({str(tmp_path / 'dist' / LAUNCHER)!r}, run_name='submitted')\n"
             "import jobs.cli, pyspark\n"
             "print(json.dumps([jobs.cli.__file__, pyspark.__file__, [p for p in sys.path if p.endswith('.zip')]]))")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = os.pathsep.join([*zips, str(zpath)])
    out = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    cli_file, spark_file, left = json.loads(out.stdout.strip().splitlines()[-1])
    assert cli_file.startswith(str(zpath)) and spark_file == pyspark.__file__
    assert str(zpath) in left and not set(left) & set(zips)
