#!/usr/bin/env bash
# The two-GPU runs in one go (nvidia-h200-x2), from the tree's root, results under $OUT:
#   the GPUs' link, `lowbit devices --measure` (GPU 1, while GPU 0 calibrates), the layer split with its one-GPU
#   reference, tensor parallel over both GPUs, then the GPU test set. Each step is bounded by `timeout`.
# NVLink multicast stays off (the machine's rule): NCCL_NVLS_ENABLE=0 and friends are exported here too.
set -o pipefail
export PYTHONUNBUFFERED=1 NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
export TRITON_CACHE_AUTOTUNING=1  # the tensor-parallel ranks reuse the autotuning the first process did
export LOWBIT_CACHE=$OUT/cache
RUNS=${RUNS:-"turbo3/turbo3@32768 q8_0/turbo4@32768 bf16@32768"}
T0=$(date +%s)
stamp() { echo "[$(( $(date +%s) - T0 )) s] $*" | tee -a "$OUT/steps.log"; }
nvidia-smi topo -m > "$OUT/topo.txt" 2>&1
nvidia-smi --query-gpu=index,name,memory.total,clocks.sm,clocks.mem,power.limit --format=csv >> "$OUT/topo.txt" 2>&1
stamp "measure (GPU 1) in the background"
(CUDA_VISIBLE_DEVICES=1 timeout 120 python3 -m lowbit.cli devices --measure --format json \
    > "$OUT/device_profile.json" 2> "$OUT/measure.err") &
MEASURE=$!
stamp "layers"
timeout "${LAYERS_S:-210}" python3 benchmarks/real_size_multi.py layers --runs $RUNS --out "$OUT/layers.json" \
    --reference /tmp/real_size_ref.pt 2>&1 | grep -v "FutureWarning\|forward_call" | tee "$OUT/layers.log"
wait $MEASURE
stamp "tp"
timeout "${TP_S:-150}" python3 -m torch.distributed.run --standalone --nproc-per-node 2 benchmarks/real_size_multi.py tp \
    --runs $RUNS --reference /tmp/real_size_ref.pt --out "$OUT/tp.json" 2>&1 \
    | grep -v "FutureWarning\|forward_call" | tee "$OUT/tp.log"
stamp "GPU tests"
timeout "${TESTS_S:-120}" python3 -m pytest -q -p no:cacheprovider -n 8 -rs tests > "$OUT/gpu_tests.log" 2>&1
tail -25 "$OUT/gpu_tests.log"
stamp "done"
