#!/usr/bin/env bash
# The checks only a GPU can do, as one prepared run (each step time-boxed; the boxes add up to 10 minutes on
# an H100/H200): the static compile check, bf16 kernel correctness, the CUDA prefetch path and a step path that
# never syncs (torch.cuda.set_sync_debug_mode("error")), the kernel benchmark against SDPA / FlexAttention /
# cuBLAS, the full-size random Qwen2-7B + CLIP-L/336 end to end at 256, 1024 and 2048 frames (ratio 16, bf16,
# triton: peak memory, frames/s), decode tokens/s after 2048 frames, and decode steps of the tiny model with
# and without CUDA graphs (bench/step_overhead.py). Results, with hardware, versions and commit, go to
# bench/results/ (and to $OUT when set, for a remote run). Also the vision stage's frames/s (demo model, 1-8
# concurrent requests) with and without encoding ahead on a side stream.
# Usage: bash bench/gpu_check.sh [--full]  (--full: every kernel shape)
set -uo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-bench/results}"
mkdir -p "$out"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu_check_env.txt"
python -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)" | tee -a "$out/gpu_check_env.txt"
quick="--quick"; [[ "${1:-}" == "--full" ]] && quick=""
# Registers, spills and shared memory of every kernel configuration (ptxas; no GPU needed, about 20 s on 16 cores).
timeout 40 env -u TRITON_INTERPRET python -m bench.kernels_static --out "$out/kernels_static.json" 2>&1 | tail -3 \
    | tee "$out/gpu_check_static.txt"
# kernel correctness in bf16, the CUDA prefetch path, a step path with no host-device sync, CUDA-graph decode
timeout 140 python -m pytest -q tests/kernels tests/engine/test_visual.py tests/engine/test_cuda_sync.py \
    tests/engine/test_cuda_graphs.py -k "bf16 or cuda" 2>&1 | tail -15 | tee "$out/gpu_check_tests.txt"
timeout 100 python -m bench.bench_kernels $quick 2>&1 | tail -40 | tee "$out/gpu_check_kernels.txt"
timeout 140 python -m bench.e2e --model full-random --frames 256 1024 2048 --ratios 16 --dtype bfloat16 \
    --attention-backend triton --repeats 1 --name e2e_full_random_gpu 2>&1 | tail -40 | tee "$out/gpu_check_e2e.txt"
timeout 60 python -m bench.e2e --model full-random --frames 2048 --ratios 16 --dtype bfloat16 --attention-backend triton \
    --repeats 1 --max-tokens 128 --name e2e_full_random_gpu_decode 2>&1 | tail -20 | tee "$out/gpu_check_decode.txt"
# decode steps (ms per step, tokens/s) of the tiny model, where launches dominate, eager and as CUDA graphs
so="$out/step_overhead_gpu.json"
timeout 30 python -m bench.step_overhead --device cuda --dtype bfloat16 --attention-backend triton --batch-sizes 1 16 64 \
    --window-seqs 0 --steps 20 --label tiny_eager --out "$so" 2>&1 | tail -4 | tee "$out/gpu_check_graphs.txt"
timeout 30 python -m bench.step_overhead --device cuda --dtype bfloat16 --attention-backend triton --batch-sizes 1 16 64 \
    --window-seqs 0 --steps 20 --cuda-graphs --label tiny_graphs --out "$so" 2>&1 | tail -4 | tee -a "$out/gpu_check_graphs.txt"
vs="$out/vision_stage_gpu.json"
timeout 25 python -m bench.vision_stage --device cuda --repeats 3 --micro-iters 5 --vision-overlap on \
    --label overlap_on --out "$vs" 2>&1 | tail -5 | tee "$out/gpu_check_vision.txt"
timeout 25 python -m bench.vision_stage --device cuda --repeats 3 --micro-iters 5 --vision-overlap off \
    --label overlap_off --out "$vs" 2>&1 | tail -5 | tee -a "$out/gpu_check_vision.txt"
cp -n bench/results/kernels_*.json bench/results/kernels_*.md bench/results/e2e_full_random_gpu* "$out/" 2>/dev/null || true
