"""Shared fixtures. The tests need KVRT_LIBRARY (the build's libkvrt.so) and,
for the ABI test, KVRT_ABI_DUMP (the abi_dump program); ctest sets both."""
import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import kvrt  # noqa: E402


@pytest.fixture
def ctx():
    context = kvrt.Context(name="pytest")
    yield context
    context.close()


@pytest.fixture
def pool(ctx):
    return kvrt.Pool(ctx, kvrt.Layout(2, 2, 16, 16), num_blocks=64)
