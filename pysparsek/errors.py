"""Errors that reach the user as one clear line instead of a traceback."""

from pysparsek.build import BuildError
from pysparsek.convert import ConvertError
from pysparsek.corpus import CorpusError
from pysparsek.llm import BindingError
from pysparsek.meta import MetaError
from pysparsek.models import ModelError
from pysparsek.patches import PatchError
from pysparsek.perplexity import PerplexityError
from pysparsek.proc import ToolError
from pysparsek.regress import RegressError
from pysparsek.rpc import RpcError
from pysparsek.source import SourceError
from pysparsek.speed import SpeedError

USER_ERRORS = (
    BuildError, ConvertError, CorpusError, BindingError, MetaError, ModelError, PatchError, PerplexityError,
    RegressError, RpcError, SourceError, SpeedError, ToolError,
)
