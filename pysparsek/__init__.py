"""pysparsek: Sparse-K attention for llama.cpp, driven from Python."""

from pysparsek.pin import LLAMA_CPP_PIN, SDIST_NAME, SDIST_VERSION

__version__ = "0.1.0"
__all__ = ["LLAMA_CPP_PIN", "SDIST_NAME", "SDIST_VERSION", "__version__"]
