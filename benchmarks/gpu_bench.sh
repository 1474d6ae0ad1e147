#!/usr/bin/env bash
# One-go GPU measurement of what protection costs on a real card, about 3-6 minutes on an H100/H200 (budget: 8).
#
# Full-size InstructPix2Pix architecture (SD v1.5 UNet with 8 input channels, SD VAE, CLIP ViT-L/14 text
# encoder; random weights: same cost as the real model, no download), 512² working resolution, bf16,
# the paper's settings (100 steps x 10 timesteps, 1 prompt per photo), 10 timed iterations per variant,
# reference and fast paths interleaved iteration by iteration. Prints the card, then per variant:
# s/iteration, s/photo, photos/hour, peak max_memory_allocated, measured TFLOP/s and % of the card's peak.
#
#   bash benchmarks/gpu_bench.sh            # results in $OUT (the device tool's folder) or benchmarks/results
#   COMPILE=1 bash benchmarks/gpu_bench.sh  # also torch.compile (adds a minute or two of compilation)
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
DEST=${OUT:-benchmarks/results}
mkdir -p "$DEST"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv | tee "$DEST/gpu.csv"
$PY -c "import torch, diffusers; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'diffusers', diffusers.__version__, 'card', torch.cuda.get_device_name())" | tee "$DEST/versions.txt"

run() {  # name, timeout in seconds, ideas.py arguments...
    local name=$1 limit=$2; shift 2
    echo "=== $name"
    timeout "$limit" $PY benchmarks/ideas.py --arch ip2p --resolution 512 --device cuda --precision bf16 \
        --iterations 10 --warmup 2 --out "$DEST/$name.json" "$@" 2>&1 | grep -v -i torchvision | tee "$DEST/$name.txt"
    echo "=== $name exit ${PIPESTATUS[0]}"
}

# batch 1: the reference, the fast default, and each idea on its own
run ip2p512_batch1 200 --batch-size 1 --breakdown \
    --variants reference,fast-1-timestep-per-call,fast,fast+channels_last,fast+gradient_checkpointing,fast+vae_recompute
# a larger batch: 4 photos, 40 (photo, timestep) samples split into UNet calls of <= max_unet_batch (16)
run ip2p512_batch4 150 --batch-size 4 --variants reference,fast,fast+vae_recompute
if [[ "${COMPILE:-0}" == "1" ]]; then
    run ip2p512_batch1_compile 240 --batch-size 1 --iterations 5 --variants fast,fast+compile
fi
echo "results in $DEST"
