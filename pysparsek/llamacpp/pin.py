"""The llama.cpp commit this project patches, and where to get it without GitHub."""

# Must equal the gitlink of the `llama.cpp` submodule (a test checks this).
LLAMA_CPP_PIN = "0c1e57098bba43ac29e6e3b677cdceebdd22334f"

# llama-cpp-python 0.3.36 vendors exactly LLAMA_CPP_PIN under vendor/llama.cpp (a git checkout),
# so its PyPI sdist is the offline source of the pinned tree.
SDIST_NAME = "llama-cpp-python"
SDIST_VERSION = "0.3.36"
