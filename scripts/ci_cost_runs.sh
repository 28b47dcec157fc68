#!/bin/bash
# results/ci-time.md: CPU seconds of the regress-shaped llama-perplexity runs (one thread, user + system time).
# Usage: scripts/ci_cost_runs.sh > results/ci-cost-runs.txt (needs both builds, the default model and text)
set -u
err=$(mktemp)
# CPU seconds (user+sys, one thread) of regress-shaped llama-perplexity runs; wall time is meaningless on the loaded box
cd "$(dirname "$0")/.."
M=build/cache/models/SmolLM2-135M-Instruct.Q4_1.gguf; T=build/cache/text/jargon-4.4.7.txt
run() { # label build ctx chunks fa extra...
  local label=$1 b=$2 c=$3 n=$4 fa=$5; shift 5
  /usr/bin/time -f "$label %U %S %e" build/$b/cpu/bin/llama-perplexity -m $M -f $T -c $c --chunks $n -b 2048 -ub 512 -fa $fa --no-warmup -ngl 0 -t 1 "$@" >/dev/null 2>"$err"
  tail -n 1 "$err"
}
echo "label user_s sys_s wall_s  (load $(cut -d' ' -f1 /proc/loadavg))"
run ctx2048-faoff-dense stock 2048 2 off
run ctx2048-faoff-k64head patched 2048 2 off --sparsek-topk 64
run ctx2048-faon-dense stock 2048 2 on
run ctx2048-faon-k64head patched 2048 2 on --sparsek-topk 64
run ctx512-faoff-dense stock 512 4 off
run ctx512-faoff-k64head patched 512 4 off --sparsek-topk 64
run ctx512-faon-dense stock 512 4 on
run ctx512-faon-k64head patched 512 4 on --sparsek-topk 64
run ctx2048-faon-k64group patched 2048 2 on --sparsek-topk 64 --sparsek-mode group
run ctx256x3-identity-dense stock 256 3 off
echo "end load $(cut -d' ' -f1 /proc/loadavg)"
