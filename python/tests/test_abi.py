"""The ctypes structs, status codes and API version against the C headers,
as the C compiler lays them out (abi_dump, built with the library)."""
import ctypes
import json
import os
import subprocess

import pytest

import kvrt
from kvrt import _structs, errors


@pytest.fixture(scope="module")
def c_abi():
    dump = os.environ.get("KVRT_ABI_DUMP")
    if not dump:
        pytest.skip("KVRT_ABI_DUMP is not set (ctest sets it to the built abi_dump)")
    return json.loads(subprocess.run([dump], check=True, capture_output=True,
                                     text=True).stdout)


def test_every_struct_matches_its_c_layout(c_abi):
    drift = []
    for name, c in c_abi["structs"].items():
        py = _structs.ALL.get(name)
        if py is None:
            drift.append("%s: no ctypes mirror in kvrt/_structs.py" % name)
            continue
        if ctypes.sizeof(py) != c["size"]:
            drift.append("%s: sizeof C %d, ctypes %d" % (name, c["size"], ctypes.sizeof(py)))
        for field, offset in c["fields"].items():
            py_offset = getattr(py, field).offset if hasattr(py, field) else None
            if py_offset != offset:
                drift.append("%s.%s: offset C %d, ctypes %s" % (name, field, offset, py_offset))
        extra = {f[0] for f in py._fields_} - set(c["fields"])
        if extra:
            drift.append("%s: ctypes fields %s not in the dump" % (name, sorted(extra)))
    missing = set(_structs.ALL) - set(c_abi["structs"])
    if missing:
        drift.append("abi_dump.c does not list %s" % sorted(missing))
    assert not drift, "kvrt/_structs.py drifted from include/kvrt:\n  " + "\n  ".join(drift)


def test_status_codes_match(c_abi):
    c_status = {value: name for name, value in c_abi["status"].items()}
    assert errors.STATUS == c_status


def test_api_version_matches_header(c_abi):
    assert kvrt.API_VERSION == c_abi["api_version"]
    assert kvrt.version()[0] == c_abi["version"]
