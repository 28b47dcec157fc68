"""pysparsek: Sparse-K attention for llama.cpp, driven from Python. The public surface is `pysparsek.api`."""

__version__ = "0.1.0"
__all__ = ["__version__"]
