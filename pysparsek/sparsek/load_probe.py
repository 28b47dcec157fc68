"""`python -m pysparsek.sparsek.load_probe MODEL.gguf`: load a model as its metadata says, decode, report.

Run as a child process by the metadata fuzz (`pysparsek.measure.metafuzz`), so that an abort inside llama.cpp ends
this process only. The model is loaded through `llm.load` on the patched library with no Sparse-K setting passed
and pysparsek's own metadata check off (the point is what llama.cpp does with the file), then a prompt is evaluated
in small ubatches and a few tokens are decoded one at a time, so the settings run in the graph (prompt rows longer
than small K values, the score copy written and read, the decode-only policy switching).

Prints one line `PROBE {json}`: the model's and the context's Sparse-K settings, or `{"refused": ...}` with exit
status 3 when llama.cpp refused the model or the context (its log, on stderr, says why).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

PROMPT = "Sparse-K keeps the highest attention scores of every row, and masks the rest of them."


def main(argv: list[str]) -> int:
    from pysparsek.sparsek import llm

    path = Path(argv[0])
    try:
        m = llm.load(path, check_metadata=False, n_ctx=128, n_batch=16, n_ubatch=16, n_threads=1,
                     n_threads_batch=1, verbose=True)
    except ValueError as exc:  # llama-cpp-python: "Failed to load model" / "Failed to create llama_context"
        print("PROBE " + json.dumps({"refused": str(exc)}), flush=True)
        return 3
    try:
        model = llm.model_sparsek(m).given()
        context = llm.get_sparsek(m).given()
        tokens = m.tokenize(PROMPT.encode(), add_bos=True)[:96]
        m.eval(tokens[:-4])
        for tok in tokens[-4:]:
            m.eval([tok])
        print("PROBE " + json.dumps({"model": model, "context": context, "score_bytes": llm.score_size(m),
                                     "tokens": len(tokens)}), flush=True)
    finally:
        m.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
