#!/usr/bin/env bash
# One run of under 8 minutes on one H200: versions, the measured bf16 matmul ceiling, then the
# benchmark runner's speed-and-memory mode for vit_l_16 at 224 (generated data, no download, batch 32
# as in the reference) with every script, plus the "highest" float32 line. Everything lands in $OUT: run.log,
# ceiling.json and the runner's results.{jsonl,md,png} in medium/ and highest/ (8 files).
# 04d runs its MLP matmuls in float8, whose peak is twice bf16's: its MFU below is against the bf16 ceiling.
# 04c compiles the model in its first step (a minute or more, outside the steady state after the warm-up
# steps) and again for the evaluation: the runner shows that first step apart (docs/compile.md).
#   usage: OUT=/some/folder bash experiments/gpu_check.sh
set -uo pipefail
# Without a CUDA GPU nothing here can be measured, and the runner would train vit_l_16 on the CPU for hours.
if ! python3 -c "import sys, torch; sys.exit(not torch.cuda.is_available())" 2>/dev/null; then
  echo "error: torch sees no CUDA GPU here, so there is nothing to measure; run this on a machine with one" >&2
  exit 1
fi
export OUT=${OUT:-results/gpu}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
# The GPU machine's stack lacks torch-optimi (04b's Kahan-summation Adam) and torchao (04d's float8 training), and
# nothing can be installed there: carry their wheels (pip download --no-deps -d .whl torch-optimi torchao==0.18.0)
# and import them from the zips on PYTHONPATH. torchao's compiled kernels do not load from a zip; its float8
# training needs none of them (torch._scaled_mm does the matmuls). 04d needs torch >= 2.11 and refuses otherwise.
export PYTHONPATH="$(ls -d "$PWD"/.whl/*.whl 2>/dev/null | paste -sd: -)${PYTHONPATH:+:$PYTHONPATH}"
steps=${STEPS:-30}
{
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv
  python3 -c "import sys, torch, torchvision, lightning; print(sys.version.split()[0], torch.__version__, torchvision.__version__, lightning.__version__)"
  python3 - <<'PY'
import json, os, torch
# The ceiling: a large bf16 matmul, mean of 20 timed products after 5 warm-ups.
a, b = (torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16) for _ in range(2))
for _ in range(5):
    a @ b
start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
start.record()
for _ in range(20):
    a @ b
end.record(); torch.cuda.synchronize()
tflops = 2 * 8192**3 * 20 / (start.elapsed_time(end) / 1e3) / 1e12
print(f"bf16 matmul ceiling: {tflops:.0f} TFLOP/s")
json.dump({"bf16_matmul_tflops": tflops}, open(os.path.join(os.environ["OUT"], "ceiling.json"), "w"))
PY
} 2>&1 | tee "$OUT/run.log"
# 4 loader workers assemble the next batches while the GPU steps, as a real data pipeline would
common=(--synthetic --model vit_l_16 --batch-size 32 --max-steps "$steps" --warmup-steps 10 --num-workers 4)
python3 benchmark.py --out "$OUT/medium" "${common[@]}" --matmul-precision medium 2>&1 | tee -a "$OUT/run.log"
python3 benchmark.py --out "$OUT/highest" --scripts 01 04 "${common[@]}" --matmul-precision highest 2>&1 | tee -a "$OUT/run.log"
python3 - <<'PY' | tee -a "$OUT/run.log"
import json, os
out = os.environ["OUT"]
ceiling = json.load(open(f"{out}/ceiling.json"))["bf16_matmul_tflops"] * 1e12
for mode in ("medium", "highest"):
    for line in open(f"{out}/{mode}/results.jsonl"):
        r = json.loads(line)
        if r["images_per_s"]:
            mfu = r["images_per_s"] * r["flops_per_image"] / ceiling
            print(f"{mode:8} {r['script']:32} {r['images_per_s']:8.1f} img/s  "
                  f"{r['flops_per_image'] / 1e9:.0f} GFLOP/image  MFU vs the measured bf16 ceiling {mfu:.1%}")
PY
