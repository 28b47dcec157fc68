"""scripts/gpu_bench.py reads test-backend-ops and ncu console output on the GPU machine; its parsers are checked
here on text in the formats those tools printed there."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))

import gpu_bench


def test_parse_perf_reads_op_params_and_time() -> None:
    text = ("  SPARSEK_MASK(ne=[32768,1,32,1],n_head_kv=8,top_k=1024,mode=1):    27030 runs -    37.95 us/run -"
            "     6208 kB/run - \x1b[1;34m 156.02 GB/s\x1b[0m\n  Backend CUDA0: OK\n")
    params = "ne=[32768,1,32,1],n_head_kv=8,top_k=1024,mode=1"
    assert gpu_bench.parse_perf(text) == [{"op": "SPARSEK_MASK", "params": params, "runs": 27030, "time_us": 37.95}]


def test_parse_ncu_keeps_template_arguments_and_units() -> None:
    text = ("==PROF== Profiling \"sparsek_hist\": 0%....100% - 1 pass\n"
            "  void sparsek_hist<1>(const unsigned int *, int *, const int *, sparsek_params) (8, 32, 1)x(256, 1, 1)\n"
            "    gpu__time_duration.sum          us         8.83\n"
            "  void sparsek_write<__half, __half>(const unsigned int *) (8, 32, 1)x(256, 1, 1), Context 1\n"
            "    gpu__time_duration.sum          ns       11070\n")
    assert gpu_bench.parse_ncu(text) == [{"kernel": "sparsek_hist<1>", "time_us": 8.83},
                                         {"kernel": "sparsek_write<__half, __half>", "time_us": 11.07}]
