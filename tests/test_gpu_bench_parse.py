"""scripts/gpu_bench.py reads test-backend-ops and ncu console output on the GPU machine; its parsers are checked
here on text in the formats those tools printed there."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

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


def _perf(op: str, params: str, us: float) -> dict:
    return {"op": op, "params": params, "runs": 100, "time_us": us}


def test_decode_split_sets_ops_alone_against_the_graph() -> None:
    rows = [
        _perf("MUL_MAT", "type_a=q4_0,type_b=f32,m=32768,n=4,k=128,bs=[8,1],nr=[1,1],per=[0,1,2,3],k_v=0", 10.0),
        _perf("MUL_MAT", "type_a=q4_0,type_b=f32,m=32768,n=4,k=128,bs=[8,1],nr=[1,1],per=[0,2,1,3],k_v=0", 99.0),
        _perf("MUL_MAT", "type_a=f16,type_b=f32,m=32768,n=4,k=128,bs=[8,1],nr=[1,1],per=[0,1,2,3]", 20.0),
        _perf("SPARSEK_MASK", "ne=[32768,1,32,1],n_head_kv=8,top_k=1024,mode=1,keep=0,skew=0,sets=1", 15.0),
        _perf("SPARSEK_MASK", "ne=[32768,1,32,1],n_head_kv=8,top_k=1024,mode=1,keep=0,skew=0,sets=0", 99.0),
        _perf("FLASH_ATTN_EXT", "hsk=128,nh=1,nr23=[4,8],kv=32768,nb=1,n_kv_max=1024", 12.0),
        _perf("FLASH_ATTN_EXT", "hsk=128,nh=8,nr23=[4,1],kv=32768,nb=1,n_kv_max=0", 60.0),
        _perf("FLASH_ATTN_EXT", "hsk=128,nh=8,nr23=[4,1],kv=32768,nb=1,n_kv_max=0", 62.0),  # the case ran twice
    ]
    # 32 layers; stock 5000 us a step, Sparse-K 5320 us: 10 us a layer more than dense FA's 61
    bench = {"rows": [{"config": "stock", "test": "tg64", "depth": 32768, "tokens_per_s": 200.0},
                      {"config": "K=1024 group q4_0 copy ub<=1", "test": "tg64", "depth": 32768,
                       "tokens_per_s": 1e6 / 5320},
                      {"config": "K=1024 group ub<=1", "test": "tg64", "depth": 32768, "tokens_per_s": 1e6 / 5640}]}
    q4 = gpu_bench.decode_split({"rows": rows}, bench, 32768, 1024, "q4_0", 32)
    assert (q4["score_us"], q4["select_us"], q4["fa_sparse_us"], q4["fa_dense_us"]) == (10.0, 15.0, 12.0, 61.0)
    assert q4["ops_sum_us"] == 37.0
    assert abs(q4["path_in_graph_us"] - 71.0) < 1e-9 and abs(q4["rest_us"] - 34.0) < 1e-9
    exact = gpu_bench.decode_split({"rows": rows}, bench, 32768, 1024, "none", 32)
    assert exact["score_us"] == 20.0 and abs(exact["path_in_graph_us"] - 81.0) < 1e-9


def test_decode_split_refuses_ambiguous_or_missing_rows() -> None:
    rows = [_perf("MUL_MAT", "type_a=q4_0,m=32768,n=4,per=[0,1,2,3],a", 1.0),
            _perf("MUL_MAT", "type_a=q4_0,m=32768,n=4,per=[0,1,2,3],b", 2.0)]
    with pytest.raises(SystemExit, match="2 MUL_MAT perf cases"):
        gpu_bench.decode_split({"rows": rows}, {"rows": []}, 32768, 1024, "q4_0", 32)
    cases = [("SPARSEK_MASK", "ne=[32768,1,32,1],mode=1,sets=1"),
             ("FLASH_ATTN_EXT", "nh=1,nr23=[4,8],n_kv_max=1024"), ("FLASH_ATTN_EXT", "nh=8,nr23=[4,1],n_kv_max=0")]
    one = [rows[0]] + [_perf(op, f"{needle},kv=32768,", 1.0) for op, needle in cases]
    with pytest.raises(SystemExit, match="no tg rows"):
        gpu_bench.decode_split({"rows": one}, {"rows": []}, 32768, 1024, "q4_0", 32)


def test_decode_split_takes_the_dense_baseline_and_the_selection_with_attention() -> None:
    rows = [
        _perf("MUL_MAT", "type_a=q4_0,type_b=f32,m=32768,n=4,k=128,per=[0,1,2,3]", 10.0),
        _perf("SPARSEK_MASK", "ne=[32768,1,32,1],mode=1,sets=1", 15.0),
        _perf("FLASH_ATTN_EXT", "nh=1,nr23=[4,8],kv=32768,nb=1,n_kv_max=1024", 12.0),
        _perf("FLASH_ATTN_EXT", "nh=8,nr23=[4,1],kv=32768,nb=1,n_kv_max=0", 60.0),
        _perf("SPARSEK_FLASH_ATTN", "hs=128,n_kv=32768,n_head=32,n_kv_max=1024", 20.0),
        _perf("SPARSEK_FLASH_ATTN", "hs=128,n_kv=32768,n_head=32,n_kv_max=1024,lists=off", 30.0),
        _perf("SPARSEK_FLASH_ATTN", "hs=128,n_kv=131072,n_head=32,n_kv_max=4096", 99.0),
    ]
    # a patched-only bench: ratios and steps against its dense run
    bench = {"rows": [{"config": "dense", "test": "tg64", "depth": 32768, "tokens_per_s": 200.0, "baseline": "dense"},
                      {"config": "K=1024 group q4_0 copy ub<=1", "test": "tg64", "depth": 32768,
                       "tokens_per_s": 1e6 / 5320, "baseline": "dense"}]}
    q4 = gpu_bench.decode_split({"rows": rows}, bench, 32768, 1024, "q4_0", 32)
    assert q4["baseline"] == "dense" and abs(q4["path_in_graph_us"] - 70.0) < 1e-9
    assert (q4["select_fa_us"], q4["select_fa_lists_off_us"]) == (20.0, 30.0)
    # the A/B variants of the setting (after it, as bench writes them) never stand in for it
    for suffix in gpu_bench.VARIANT_SUFFIXES:
        bench["rows"].append({"config": f"K=1024 group q4_0 copy ub<=1{suffix}", "test": "tg64", "depth": 32768,
                              "tokens_per_s": 1e6 / 6000, "baseline": "dense"})
    assert abs(gpu_bench.decode_split({"rows": rows}, bench, 32768, 1024, "q4_0", 32)["path_in_graph_us"] - 70.0) < 1e-9


def test_score_types_map_to_flags() -> None:
    """gpu_bench's --score-types entries become the same setting in llama-bench and in the common tools."""
    assert gpu_bench.score_flags("none") == (["-skst", "none"], [], "")
    assert gpu_bench.score_flags("q4_0") == (["-skst", "q4_0"], ["--sparsek-score-type", "q4_0"], " q4_0 copy")
    assert gpu_bench.score_flags("sparq16-shared") == (
        ["-skst", "none", "-sksr", "16", "-sksq", "1"], ["--sparsek-sparq-r", "16", "--sparsek-sparq-shared", "1"],
        " sparq r=16 shared")
    assert gpu_bench.score_flags("sparq8")[0] == ["-skst", "none", "-sksr", "8", "-sksq", "0"]
    with pytest.raises(SystemExit, match="unknown score type 'q5'"):
        gpu_bench.score_flags("q5")
