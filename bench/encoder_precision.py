"""Does the encoder hold its outputs in bf16? The shipped heads on fashion valid, fp32 towers against bf16.

    python bench/encoder_precision.py --fashion /work/shared/data/fashion [--threads 1]

Issue 21 keeps a precision only where the outputs hold: embeddings' cosine to the fp32 ones >= 0.999 and the
heads' metrics within 0.2 points. This loads the shipped default encoder twice (``precision="fp32"`` and
``"bf16"``, as the job's ``--precision`` does: the text tower under bf16 autocast, the image tower as
``models.encoders.tower_precisions`` says), embeds the fashion valid split (titles and photos) with each, applies
the shipped head bundle to each side's embeddings, and prints per task (category, colour, usage, gender) accuracy
and macro-F1 on the full titles and on titles cut to the brand (``models.heads.degrade``), the adult head's
decisions that change, each tower's embedding cosine to fp32, and the titles/s and products/s of each. On a CPU
without AVX-512 BF16 or AMX, bf16 is emulated: the figures hold, the speed does not.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

FLOOR_POINTS, FLOOR_COSINE = 0.2, 0.999


def _scores(bundle, text: np.ndarray, image: np.ndarray, titles: list[str], rows) -> dict[str, tuple[float, float]]:
    """Accuracy and macro-F1 (in points) per task of ``models.heads.fashion.TASKS`` (``rows`` has their columns)."""
    from sklearn.metrics import f1_score

    from models.heads.fashion import TASKS

    out = {}
    for task, col in TASKS.items():
        head = bundle.category if task == "category" else bundle.attributes.get(task)
        if head is None:
            continue
        gold = rows[col].astype(str).tolist()
        pred = [head.classes[i] for i in head.predict(text, image, titles).argmax(axis=1)]
        keep = [i for i, g in enumerate(gold) if g not in (None, "None", "nan")]
        g, p = [gold[i] for i in keep], [pred[i] for i in keep]
        out[task] = (100 * float(np.mean([x == y for x, y in zip(g, p, strict=True)])),
                     100 * float(f1_score(g, p, average="macro")))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--fashion", required=True, help="the fashion folder (products.parquet + images/)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--store", default=None, help="model store root (default: the shipped store)")
    a = ap.parse_args(argv)

    import torch

    from models.encoders import load_encoder
    from models.heads.bundle import find_heads, load_heads
    from models.heads.degrade import degrade, known_brands
    from models.heads.fashion import gender_of
    from models.precision import cpu_has_bf16
    from models.store import store_root
    from models.training.evaluate import embed_data
    from models.training.fashion import load_fashion

    torch.set_num_threads(a.threads)
    encoders = {p: load_encoder("default", "cpu", p) for p in ("fp32", "bf16")}
    enc = encoders["fp32"]
    bundle_dir = find_heads(store_root(a.store), enc.version)
    if bundle_dir is None:
        ap.error(f"no head bundle in the store for {enc.version}")
    bundle = load_heads(bundle_dir)
    split = load_fashion(a.fashion, size=enc.pixel_geometry)
    titles = split.valid_rows["title"].astype(str).tolist()
    rows = split.valid_rows.assign(gender=[gender_of(t) for t in titles])   # as models.heads.fashion labels it
    kinds = {"full titles": titles,
             "titles cut to the brand": degrade(titles, "brand", 0,
                                                known_brands(split.train_rows["title"].astype(str).tolist()))}
    text, image, rate, photo_rate, scores, adult = {}, {}, {}, {}, {}, {}
    for p, e in encoders.items():
        e.embed_texts(titles[:256])   # warm-up
        t0 = time.perf_counter()
        text[p] = {k: e.embed_texts(ts) for k, ts in kinds.items()}
        rate[p] = sum(map(len, kinds.values())) / (time.perf_counter() - t0)
        t0 = time.perf_counter()
        image[p], _ = embed_data(e, split.valid)
        photo_rate[p] = len(titles) / (time.perf_counter() - t0)
        scores[p] = {k: _scores(bundle, text[p][k], image[p], ts, rows) for k, ts in kinds.items()}
        if bundle.adult is not None:
            adult[p] = bundle.adult.predict(text[p]["full titles"], None)[:, 1] >= bundle.adult_threshold

    print(f"{enc.version}, {len(titles)} fashion valid products, {a.threads} thread(s), "
          f"AVX-512 BF16/AMX: {cpu_has_bf16()}\n")
    print("| titles | task | accuracy fp32 | accuracy bf16 | change | macro-F1 fp32 | macro-F1 bf16 | change |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    worst = 0.0
    for k in kinds:
        for task, (acc, f1) in scores["fp32"][k].items():
            acc16, f116 = scores["bf16"][k][task]
            worst = max(worst, abs(acc16 - acc), abs(f116 - f1))
            print(f"| {k} | {task} | {acc:.2f} | {acc16:.2f} | {acc16 - acc:+.2f} | {f1:.2f} | {f116:.2f} | "
                  f"{f116 - f1:+.2f} |")
    cos = np.concatenate([(text["fp32"][k] * text["bf16"][k]).sum(axis=1) for k in kinds])
    print(f"\n- text embeddings' cosine to fp32: min {cos.min():.5f}, median {np.median(cos):.5f} "
          f"(floor {FLOOR_COSINE})")
    has = np.isfinite(image["fp32"]).all(axis=1) & np.isfinite(image["bf16"]).all(axis=1)
    icos = (image["fp32"][has] * image["bf16"][has]).sum(axis=1)
    print(f"- image embeddings' cosine to fp32 ({enc.image_precision} against {encoders['bf16'].image_precision}, "
          f"{int(has.sum())} photos): min {icos.min():.5f}, median {np.median(icos):.5f} (floor {FLOOR_COSINE})")
    print(f"- largest metric change: {worst:.2f} points (floor {FLOOR_POINTS})")
    if adult:
        print(f"- adult head decisions changed: {int((adult['fp32'] != adult['bf16']).sum())} of {len(titles)}")
    print(f"- text tower titles/s: fp32 {rate['fp32']:.0f}, bf16 {rate['bf16']:.0f} "
          f"({rate['bf16'] / rate['fp32']:.2f}x)")
    print(f"- products/s through embed_data (photo and title of each): fp32 {photo_rate['fp32']:.0f}, bf16 "
          f"{photo_rate['bf16']:.0f} ({photo_rate['bf16'] / photo_rate['fp32']:.2f}x)")
    held = min(cos.min(), icos.min()) >= FLOOR_COSINE and worst <= FLOOR_POINTS
    print(f"- the bf16 encoder {'holds' if held else 'does NOT hold'} the fp32 outputs")
    return 0 if held else 1


if __name__ == "__main__":
    raise SystemExit(main())
