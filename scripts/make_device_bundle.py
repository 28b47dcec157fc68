#!/usr/bin/env python3
"""Pack the pinned llama.cpp (stock) and pin + patch series (patched), trimmed to what the GPU build needs, into
one small tarball for a machine without network (the lent GPU machine).

Usage: .venv/bin/python scripts/make_device_bundle.py [--out .devbundle]
Writes OUT/llama.cpp-bundle.tar.xz with llama.cpp-stock/ and llama.cpp-patched/ inside, plus BUNDLE.json.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pysparsek.llamacpp import patches, source
from pysparsek.llamacpp.pin import LLAMA_CPP_PIN

# not needed to build ggml-cuda, libllama, the tools and test-backend-ops, or to write a GGUF
# only folders CMake skips with examples, server, app and the other backends off
DROP = ["docs", "models", "media", "benches", ".github", ".devops", "ci", "pocs", "app", "examples", "conversion",
        "tools/ui", "tools/server", "tools/cli", "tools/rpc", "tools/tuning",
        "ggml/src/ggml-vulkan", "ggml/src/ggml-metal", "ggml/src/ggml-sycl", "ggml/src/ggml-opencl",
        "ggml/src/ggml-cann", "ggml/src/ggml-musa", "ggml/src/ggml-hip", "ggml/src/ggml-webgpu",
        "ggml/src/ggml-zdnn", "ggml/src/ggml-hexagon", "ggml/src/ggml-openvino", "ggml/src/ggml-et",
        "ggml/src/ggml-zendnn", "ggml/src/ggml-virtgpu", "ggml/src/ggml-rpc"]
LIMIT = 20 * 1024 * 1024


def trim(tree: Path) -> None:
    for rel in DROP:
        shutil.rmtree(tree / rel, ignore_errors=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=".devbundle")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    src = source.acquire()
    with tempfile.TemporaryDirectory() as tmp:
        stock, patched = Path(tmp) / "llama.cpp-stock", Path(tmp) / "llama.cpp-patched"
        source.export_commit(src, stock)
        source.export_commit(src, patched)
        patches.apply_series(patched, patches.read_series())
        trim(stock)
        trim(patched)
        info = {"llama_cpp_pin": LLAMA_CPP_PIN, "source": src.origin, "patch_series_sha256": patches.series_hash(),
                "patches": [p.name for p in patches.read_series()]}
        (Path(tmp) / "BUNDLE.json").write_text(json.dumps(info, indent=2) + "\n")
        tarball = out / "llama.cpp-bundle.tar.xz"
        subprocess.run(["tar", "-C", tmp, "-cf", str(tarball), "--use-compress-program=xz -9 -T0",
                        "BUNDLE.json", stock.name, patched.name], check=True)
    size = tarball.stat().st_size
    print(f"wrote {tarball} ({size / 1e6:.1f} MB): llama.cpp {LLAMA_CPP_PIN[:12]} stock + {len(info['patches'])} "
          f"patches")
    if size > LIMIT:
        print(f"error: the bundle is larger than {LIMIT // (1024 * 1024)} MiB", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
