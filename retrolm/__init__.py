"""RetroLM: long-context LLM inference and training by KV-level page retrieval."""
from .cache import PagedKVCache
from .config import RetrieverConfig, RetroLMConfig
from .errors import RetroLMError
from .model import SUPPORTED_MODEL_TYPES, RetroLM

__all__ = ["RetroLM", "RetroLMConfig", "RetrieverConfig", "PagedKVCache", "RetroLMError", "SUPPORTED_MODEL_TYPES"]
__version__ = "0.1.0"
