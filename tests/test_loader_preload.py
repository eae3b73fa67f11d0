"""Which modules the worker forkserver preloads: those the preprocessor's pickle imports."""

from __future__ import annotations

import functools
import json

from featurestore.loader import pickled_modules


def test_modules_are_read_off_the_pickle():
    mods = pickled_modules(functools.partial(json.dumps, indent=1))
    assert "functools" in mods and "json" in mods
    assert "builtins" not in mods and "__builtin__" not in mods


def test_unpicklable_gives_nothing_rather_than_raising():
    assert pickled_modules(lambda x: x) == []
