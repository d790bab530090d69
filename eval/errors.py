"""The one exception type the evaluation harness raises for bad input; its message names the fix."""
from retrolm.errors import RetroLMError


class EvalError(RetroLMError):
    """Bad benchmark input (unknown task or method, missing data, context over a method's capacity)."""
