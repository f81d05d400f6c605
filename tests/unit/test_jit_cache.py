"""Telling whether a numba fast path still compiles on its first call here."""

import importlib.util
import sys

from faultstream.processors.offline.jit import compiles_on_first_call, compiling

MODULE = """
from numba import njit


@njit(cache=True)
def twice(x):
    return 2 * x
"""


def load(tmp_path, name):
    path = tmp_path / f"{name}.py"
    path.write_text(MODULE)
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def test_a_cached_function_compiles_on_its_first_call_only(tmp_path):
    module = load(tmp_path, "fs_jit_probe")
    try:
        assert compiles_on_first_call(module.twice)
        assert compiling((("fs_jit_probe", "twice"),))
        assert module.twice(21) == 42
        assert not compiles_on_first_call(module.twice)
        assert not compiling((("fs_jit_probe", "twice"),))
    finally:
        del sys.modules["fs_jit_probe"]


def test_a_module_not_imported_is_not_compiling():
    assert not compiling((("fs_jit_never_imported", "twice"),))


def test_a_plain_function_cannot_tell_and_says_no():
    assert not compiles_on_first_call(len)
