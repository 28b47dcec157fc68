#!/usr/bin/env bash
# On a machine whose CPU has AMX: build stock llama.cpp for the CPU twice, without and with pysparsek's AMX
# fix (pysparsek/cmake/ggml_no_amx.cmake), and run a Q4_1 model through llama-bench on each. Needs no network:
# the pinned source comes from the device bundle (scripts/make_device_bundle.py), the model is random weights.
# Usage: bash scripts/amx_check.sh [WORK_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
W=${1:-/tmp/pysparsek-amx}
mkdir -p "$W"
echo "CPU: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2-); AMX flags: $(grep -o -m3 -w 'amx_[a-z0-9]*' /proc/cpuinfo | sort -u | tr '\n' ' ')"
[ -d "$W/llama.cpp-stock" ] || python3 -c "import tarfile, sys; tarfile.open('.devbundle/llama.cpp-bundle.tar.xz').extractall(sys.argv[1], filter='tar')" "$W"
for fix in off on; do
    B="$W/build-amx-fix-$fix"
    extra=()
    [ "$fix" = on ] && extra=("-DCMAKE_PROJECT_ggml_INCLUDE=$PWD/pysparsek/cmake/ggml_no_amx.cmake")
    cmake -S "$W/llama.cpp-stock" -B "$B" -G Ninja -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=ON -DLLAMA_BUILD_TESTS=OFF \
        -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF -DLLAMA_BUILD_APP=OFF -DLLAMA_OPENSSL=OFF "${extra[@]}" >/dev/null
    cmake --build "$B" -j "$(nproc)" --target llama-bench llama-quantize >/dev/null
    if [ ! -f "$W/tiny-q4_1.gguf" ]; then
        python3 -c "
import sys; sys.path.insert(0, 'scripts'); from pathlib import Path; import gpu_bench
gpu_bench.write_random_gguf(Path(sys.argv[1]), 'tiny', Path(sys.argv[2]))" "$W/tiny-q8_0.gguf" "$W/llama.cpp-stock/gguf-py"
        "$B/bin/llama-quantize" --allow-requantize "$W/tiny-q8_0.gguf" "$W/tiny-q4_1.gguf" Q4_1 >/dev/null 2>&1
    fi
    n_tile=$(objdump -d --no-show-raw-insn "$B/bin/libggml-cpu.so" | grep -cE '\s(ldtilecfg|tilezero|tileloadd|tilestored|tdpb[su][su]d|tdpbf16ps)\s' || true)
    set +e
    "$B/bin/llama-bench" -m "$W/tiny-q4_1.gguf" -ngl 0 -p 64 -n 8 -r 1 -t 8 -o json >"$B/bench.json" 2>"$B/bench.err"
    rc=$?
    set -e
    tps=$(python3 -c "import json,sys; print(', '.join(f\"{r['n_prompt'] and 'pp' or 'tg'}: {r['avg_ts']:.0f} t/s\" for r in json.load(open(sys.argv[1]))))" "$B/bench.json" 2>/dev/null || echo "no results")
    echo "AMX fix $fix: $n_tile AMX tile instructions in libggml-cpu.so; llama-bench (CPU, Q4_1) exit $rc; $tps"
done
