"""Errors that reach the user as one clear line instead of a traceback."""

from pysparsek.build import BuildError
from pysparsek.corpus import CorpusError
from pysparsek.llm import BindingError
from pysparsek.models import ModelError
from pysparsek.patches import PatchError
from pysparsek.perplexity import PerplexityError
from pysparsek.proc import ToolError
from pysparsek.source import SourceError

USER_ERRORS = (BuildError, CorpusError, BindingError, ModelError, PatchError, PerplexityError, ToolError, SourceError)
