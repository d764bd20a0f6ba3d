"""Measure whether a stored encoder's image tower holds its embeddings in bf16 on a CPU, and record it (issue 21).

A tower trained since 2026-12-05 is measured when it is trained (``models.training.image_tower``,
``jobs/retrain.py --image-tower``). This measures one that is already in the store, in the serving form the job
runs today (:func:`models.encoders.serving_form`: BatchNorms folded, channels-last, the stem and the first stage in
fp32), over the photos its trainer held out (the fashion valid split), and writes the figures into its manifest
under ``image_bf16_on_cpu`` (:func:`models.store.record_measurement`). The enrich job then runs that tower under
bf16 autocast on a CPU with bf16 instructions only where the lowest cosine reaches 0.999
(:func:`models.encoders.image_bf16_holds`)::

    python -m models.training.image_precision --data /work/shared/data/fashion [--version V] [--dry-run]

The heads' metrics on those embeddings are what ``python bench/encoder_precision.py`` compares.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys

__all__ = ["main"]

log = logging.getLogger(__name__)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", required=True, help="the fashion folder (products.parquet + images/)")
    p.add_argument("--store", default=None, help="model store root (default: the store shipped in models/store)")
    p.add_argument("--version", default=None, help="the encoder version (default: the store's current one)")
    p.add_argument("--cache-dir", default=None)
    p.add_argument("--dry-run", action="store_true", help="print the measurement, write nothing")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    from models.encoders import IMAGE_BF16_FLOOR, IMAGE_BF16_KEY, image_bf16_holds, load_encoder, measure_image_bf16
    from models.store import current_version, record_measurement, store_root, version_dir
    from models.training.fashion import load_fashion

    root = store_root(args.store)
    version = args.version or current_version(root)
    if not version:
        raise SystemExit(f"no --version given and no current version in {root}")
    vdir = version_dir(root, version)
    enc = load_encoder(str(vdir), "cpu")   # verifies the version's checksums and name first
    if enc.resize_mode != "longest":
        raise SystemExit(f"{version}: not a convolutional tower over the whole photo; nothing to measure here")
    split = load_fashion(args.data, size=enc.image_hw, cache_dir=args.cache_dir)
    m = measure_image_bf16(enc.model, split.valid.pixels)
    verdict = "holds" if image_bf16_holds({IMAGE_BF16_KEY: m}) else "does not hold"
    sys.stdout.write(json.dumps({version: m}, indent=2) + f"\nbf16 on a CPU: {verdict} (lowest cosine "
                     f"{m['cosine_min']}, floor {IMAGE_BF16_FLOOR})\n")
    if not args.dry_run:
        record_measurement(vdir, IMAGE_BF16_KEY, m)
        log.info("recorded %s in %s", IMAGE_BF16_KEY, vdir / "manifest.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
