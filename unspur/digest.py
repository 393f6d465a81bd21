"""Stable short digests of configs: the key a cache, a resumable run or a pipeline stage is
reused under. Same content -> same digest across processes and machines (sorted JSON)."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from pydantic import BaseModel

__all__ = ["config_digest"]


def config_digest(config: BaseModel | Any, length: int = 16, salt: str = "") -> str:
    """The first ``length`` hex digits of the SHA-256 of ``salt`` + ``config`` as sorted JSON.

    ``config``: a pydantic model (dumped in JSON mode) or any JSON-able value; ``salt``: text
    hashed before it (e.g. the digest of the stages upstream).
    """
    data = config.model_dump(mode="json") if isinstance(config, BaseModel) else config
    text = json.dumps(data, sort_keys=True, default=str)
    return hashlib.sha256((salt + text).encode()).hexdigest()[:length]
