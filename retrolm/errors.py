"""The one exception type RetroLM raises for bad input; its message always names the fix."""


class RetroLMError(ValueError):
    """Bad input or configuration. Subclasses ValueError so generic handlers still catch it."""
