#!/usr/bin/env bash
# One device session's steps for issue #18, each a single `run` call (the machine stays up between them only
# while calls follow within ~30 s). Reports go to $OUT. Usage: scripts/gpu_session.sh H|A|L|D|V|F|B|S|C
set -u
W=/tmp/pysparsek-gpu
OUT=${OUT:-reports/gpu}
mkdir -p "$W" "$OUT"
# the SmolLM2 GGUF travels in parts (one per call): gather them in the work folder
for p in .gl/smol.part0*; do [ -f "$p" ] && cp "$p" "$W/"; done
nvidia-smi --query-gpu=name,clocks.max.sm,memory.total --format=csv | tee "$OUT/gpu.txt"
# the standalone selection harness (lists checked against the CPU reference, timed with and without)
harness() { python3 scripts/gpu_bench.py harness --out "$OUT" 2>&1 | tail -60; }
case "$1" in
H)  # little device time left: the harness alone
  harness
  ;;
A|L)  # L: little device time left, the harness already run: build, check, lists A/B
  [ "$1" = A ] && harness
  python3 -c "import sys;sys.path.insert(0,'scripts');import gpu_bench as g;from pathlib import Path as P;w=P('$W');g.write_random_gguf(w/'random-llama3-8b-q8_0.gguf','llama3-8b',w/'llama.cpp-patched/gguf-py')" > "$OUT/write_gguf.log" 2>&1 &
  python3 scripts/gpu_bench.py build --flavors patched --out "$OUT" 2>&1 | grep -v "^\[" | tail -20
  wait
  python3 scripts/gpu_bench.py model --out "$OUT" > "$OUT/model.log" 2>&1 &
  python3 scripts/gpu_bench.py check --out "$OUT" 2>&1 | tail -80
  wait; tail -3 "$OUT/model.log"
  # the lists' end-to-end effect in the same call, in case no second call comes: tg64 only, one rep
  python3 scripts/gpu_bench.py bench --flavors patched --depths 32768 --topk 1024 --modes group \
    --score-types q4_0 --max-ubatch 1 --lists-ab --n-prompt 0 --reps 1 --rounds 1 --out "$OUT/a" 2>&1 | tail -20
  ;;
B)
  python3 scripts/gpu_bench.py bench --flavors patched --depths 32768 --topk 1024 --modes group \
    --score-types none,q4_0 --max-ubatch 1 --lists-ab --reps 2 --rounds 2 --out "$OUT" 2>&1 | tail -40
  python3 scripts/gpu_bench.py profile --out "$OUT" 2>&1 | tail -60
  ;;
D)  # the sparse decode FA kernel (harness, then in llama.cpp) and the diagnosis of SPARSEK_FLASH_ATTN through the
  # MMA gather (GROUP differed from the CPU from run to run): build, harness, test-backend-ops, decode A/B, initcheck
  python3 -c "import sys;sys.path.insert(0,'scripts');import gpu_bench as g;from pathlib import Path as P;w=P('$W');g.write_random_gguf(w/'random-llama3-8b-q8_0.gguf','llama3-8b',w/'llama.cpp-patched/gguf-py')" > "$OUT/write_gguf.log" 2>&1 &
  python3 scripts/gpu_bench.py build --flavors patched --out "$OUT" 2>&1 | grep -v "^\[" | tail -20
  wait
  python3 scripts/gpu_bench.py model --out "$OUT" > "$OUT/model.log" 2>&1 &
  python3 scripts/gpu_bench.py decode_harness --out "$OUT" 2>&1 | tail -45
  T="$W/build-patched/bin/test-backend-ops"
  echo "== FLASH_ATTN_EXT with gather lists (decode: the sparse decode kernel)"
  timeout 150 "$T" test -b CUDA0 -o FLASH_ATTN_EXT -p "n_kv_max=[1-9]" 2>&1 | grep -E "FAIL|passed|ERR" | cut -c1-300
  for e in "GGML_CUDA_SPARSEK_LIST=0" "GGML_CUDA_SPARSEK_LIST=1"; do
    echo "== SPARSEK_FLASH_ATTN $e (sparse decode kernel)"
    env $e timeout 120 "$T" test -b CUDA0 -o SPARSEK_FLASH_ATTN 2>&1 | grep -E "FAIL|passed|ERR" | cut -c1-300
  done
  for e in "GGML_CUDA_SPARSE_DECODE=0" "GGML_CUDA_SPARSE_DECODE=0 GGML_CUDA_PDL=0"; do
    echo "== SPARSEK_FLASH_ATTN $e (MMA gather), 32768/5000/4096 cells"
    env $e timeout 90 "$T" test -b CUDA0 -o SPARSEK_FLASH_ATTN -p "n_kv=(32768|5000|4096)," 2>&1 | grep -E "FAIL|passed|ERR" | cut -c1-300
  done
  wait; tail -2 "$OUT/model.log"
  python3 scripts/gpu_bench.py bench --flavors patched --depths 32768 --topk 1024 --modes group \
    --score-types q4_0 --max-ubatch 1 --decode-ab --n-prompt 0 --reps 1 --rounds 1 --out "$OUT/a" 2>&1 | tail -8
  python3 scripts/gpu_bench.py bench --flavors patched --depths 131072 --topk 4096 --modes group \
    --score-types q4_0 --max-ubatch 1 --decode-ab --n-prompt 0 --reps 1 --rounds 1 --out "$OUT/c" 2>&1 | tail -8
  echo "== compute-sanitizer --tool initcheck (MMA gather, GROUP, 5000 cells)"
  GGML_CUDA_SPARSE_DECODE=0 timeout 80 compute-sanitizer --tool initcheck --print-limit 10 "$T" test -b CUDA0 \
    -o SPARSEK_FLASH_ATTN -p "n_kv=5000,.*mode=1,.*sparse=1" 2>&1 | grep -v "^ *$" | tail -40
  ;;
V)  # verify (next session): build patched and stock, the op tests with the corrected SPARSEK_FLASH_ATTN (lists off
  # and on, decode kernel and MMA gather), then decode vs stock at 32768 (2 x 2)
  python3 -c "import sys;sys.path.insert(0,'scripts');import gpu_bench as g;from pathlib import Path as P;w=P('$W');g.write_random_gguf(w/'random-llama3-8b-q8_0.gguf','llama3-8b',w/'llama.cpp-patched/gguf-py')" > "$OUT/write_gguf.log" 2>&1 &
  python3 scripts/gpu_bench.py build --flavors patched,stock --out "$OUT" 2>&1 | grep -v "^\[" | tail -20
  wait
  python3 scripts/gpu_bench.py model --out "$OUT" > "$OUT/model.log" 2>&1 &
  python3 scripts/gpu_bench.py sparq_harness --out "$OUT" 2>&1 | tail -32
  T="$W/build-patched/bin/test-backend-ops"
  for e in "GGML_CUDA_SPARSEK_LIST=0" "GGML_CUDA_SPARSEK_LIST=1" "GGML_CUDA_SPARSEK_LIST=1 GGML_CUDA_SPARSE_DECODE=0"; do
    echo "== SPARSEK_FLASH_ATTN $e"
    env $e timeout 150 "$T" test -b CUDA0 -o SPARSEK_FLASH_ATTN 2>&1 | grep -E "FAIL|passed|ERR" | cut -c1-300
  done
  for op in SPARSEK_MASK MUL_MAT SPARQ_SCORE; do
    echo "== $op"; timeout 150 "$T" test -b CUDA0 -o $op 2>&1 | grep -E "FAIL|passed" | tail -3
  done
  echo "== FLASH_ATTN_EXT with gather lists"
  timeout 150 "$T" test -b CUDA0 -o FLASH_ATTN_EXT -p "n_kv_max=[1-9]" 2>&1 | grep -E "FAIL|passed" | tail -3
  wait; tail -2 "$OUT/model.log"
  python3 scripts/gpu_bench.py bench --depths 32768 --topk 1024 --modes group --score-types none,q4_0 \
    --max-ubatch 1 --decode-ab --reps 2 --rounds 2 --out "$OUT" 2>&1 | tail -16
  ;;
F)  # after A or L on the same machine: SPARSEK_FLASH_ATTN on CUDA with the gather lists off, then on
  for lists in 0 1; do
    echo "== GGML_CUDA_SPARSEK_LIST=$lists"
    GGML_CUDA_SPARSEK_LIST=$lists "$W/build-patched/bin/test-backend-ops" test -b CUDA0 -o SPARSEK_FLASH_ATTN 2>&1 |
      grep -E "OK|FAIL|passed|ERR" | cut -c1-260
  done
  ;;
S)  # SparQ (issue #21) on the GPU, after A or L on the same machine: decode at 131072 against dense, score pass times
  python3 scripts/gpu_bench.py bench --flavors patched --depths 131072 --topk 4096 --modes group \
    --score-types q4_0,sparq16,sparq16-shared --max-ubatch 1 --n-prompt 0 --reps 1 --rounds 1 --out "$OUT/s" 2>&1 | tail -20
  python3 scripts/gpu_bench.py profile --out "$OUT/s" 2>&1 | grep -iE "sparq|SPARSEK_MASK|MUL_MAT" | tail -30
  ;;
C)
  python3 scripts/gpu_bench.py bench --flavors patched --depths 131072 --topk 4096 --modes group \
    --score-types none,q4_0 --max-ubatch 1 --lists-ab --n-prompt 0 --reps 1 --rounds 1 --out "$OUT" 2>&1 | tail -30
  if [ -f "$W/smol.part02" ]; then
    cat "$W"/smol.part0* > "$W/smol.gguf"
    GGML_CUDA_SPARSEK_LIST=1 python3 scripts/gpu_bench.py ppl --ppl-model "$W/smol.gguf" --ppl-text .gl/jargon.txt \
      --topk 64 --modes group,token --score-types none --out "$OUT" 2>&1 | tail -20
  fi
  ;;
esac
