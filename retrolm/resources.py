"""Files RetroLM ships beside its code: the embedded default model (assets/) and the configs (configs/).

In a checkout (or an editable install) they sit next to the package; a regular `pip install` copies them
under <prefix>/share/retrolm/ (setup.py's data_files).
"""
from __future__ import annotations

import os
import sys

CHECKOUT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def shipped_candidates(folder: str, name: str) -> list[str]:
    """Where a shipped `folder/name` may be, checkout first: e.g. ("assets", "retrolm-byte-llama")."""
    return [os.path.join(CHECKOUT, folder, name), os.path.join(sys.prefix, "share", "retrolm", folder, name)]
