"""fnmatch globs with a bounded cache of compiled patterns.

`fnmatch.fnmatchcase` caches up to 32,768 compiled patterns per process, so callers that
pass user-chosen globs could grow it to gigabytes; this cache holds at most CACHED."""

from __future__ import annotations

import fnmatch
import re
from functools import lru_cache

CACHED = 1024
MAX_GLOB_CHARS = 200  # longer globs are refused where users give them (API, hooks)


@lru_cache(maxsize=CACHED)
def _compiled(pattern: str) -> re.Pattern[str]:
    return re.compile(fnmatch.translate(pattern))


def glob_match(text: str, pattern: str) -> bool:
    """Case-sensitive fnmatch, as `fnmatch.fnmatchcase`."""
    return _compiled(pattern).match(text) is not None


def any_match(text: str, patterns: list[str]) -> bool:
    return any(glob_match(text, p) for p in patterns)
