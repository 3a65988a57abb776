"""libkvrt.so loads with dlopen() into a running interpreter that already
holds numpy and torch (the static-TLS failure a linked jemalloc caused),
and a library of another ABI version is refused with a clear error."""
import os
import subprocess

import pytest

LIB = os.environ.get("KVRT_LIBRARY") and os.path.abspath(os.environ["KVRT_LIBRARY"])


def run(code, **env):
    full = dict(os.environ, **env)
    return subprocess.run(["/usr/bin/python3", "-c", code], capture_output=True, text=True,
                          timeout=120, env=full)


@pytest.mark.skipif(not LIB, reason="KVRT_LIBRARY not set")
def test_dlopen_after_numpy_and_torch():
    pytest.importorskip("torch")
    r = run("import numpy, torch, ctypes; lib = ctypes.CDLL(%r); "
            "print(lib.kvrt_status_str)" % LIB)
    assert r.returncode == 0, r.stderr
    r = run("import numpy, torch, sys; sys.path.insert(0, %r); import kvrt; "
            "c = kvrt.Context(); print(c.ctl('ctx.host.mapped_bytes')); c.close()"
            % os.path.join(os.path.dirname(__file__), ".."))
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "0", "a context with no host pool maps nothing"


@pytest.mark.skipif(not LIB, reason="KVRT_LIBRARY not set")
def test_no_dependency_needs_static_tls():
    """No library libkvrt pulls in may be flagged STATIC_TLS, beyond glibc's
    own (libc, libm, ld.so, which every process has loaded, and libresolv,
    which libcurl brings: glibc reserves static TLS surplus for its own
    libraries, and test_dlopen_after_numpy_and_torch loads it late)."""
    out = subprocess.run(["ldd", LIB], capture_output=True, text=True, check=True).stdout
    libs = [line.split("=>")[1].split()[0] for line in out.splitlines()
            if "=>" in line and "/" in line.split("=>")[1]]
    offenders = []
    for lib in [LIB] + libs:
        base = os.path.basename(lib)
        if base.startswith(("libc.so", "libm.so", "ld-linux", "libresolv.so")):
            continue
        dyn = subprocess.run(["readelf", "-d", lib], capture_output=True, text=True).stdout
        if "STATIC_TLS" in dyn:
            offenders.append(lib)
    assert not offenders, "late dlopen would fail: %s need static TLS" % offenders


def test_missing_library_is_a_clear_error(tmp_path):
    r = run("import sys; sys.path.insert(0, %r); import kvrt\n"
            "try:\n    kvrt.Context()\nexcept kvrt.KvrtError as e:\n    print(e.name)"
            % os.path.join(os.path.dirname(__file__), ".."),
            KVRT_LIBRARY=str(tmp_path / "nope.so"), LD_LIBRARY_PATH=str(tmp_path))
    assert r.returncode == 0, r.stderr
    assert "KVRT_ERR_NOT_FOUND" in r.stdout


def test_other_abi_version_is_refused():
    r = run("import sys; sys.path.insert(0, %r); import kvrt, kvrt._lib as L\n"
            "L.API_MAJOR = 2\n"
            "try:\n    kvrt.Context()\nexcept kvrt.KvrtError as e:\n    print(e.name, e.detail)"
            % os.path.join(os.path.dirname(__file__), ".."))
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("KVRT_ERR_VERSION_MISMATCH"), r.stdout
    assert "not ABI-compatible" in r.stdout


def test_pip_install_then_import_next_to_torch(tmp_path):
    """The README's install (pip, no build isolation, nothing downloaded),
    then `import torch, kvrt` from outside the source tree."""
    pytest.importorskip("torch")
    src = os.path.join(os.path.dirname(__file__), "..")
    copy, site, elsewhere = tmp_path / "src", tmp_path / "site", tmp_path / "elsewhere"
    copy.mkdir()
    elsewhere.mkdir()
    subprocess.run(["cp", "-r", os.path.join(src, "kvrt"), os.path.join(src, "pyproject.toml"),
                    os.path.join(src, "README.md"), str(copy)], check=True)
    r = subprocess.run(["/usr/bin/python3", "-m", "pip", "install", "--no-build-isolation",
                        "--no-index", "--no-deps", "--target", str(site), str(copy)],
                       capture_output=True, text=True, timeout=300, cwd=str(copy))
    assert r.returncode == 0, r.stdout + r.stderr
    r = subprocess.run(["/usr/bin/python3", "-c", "import torch, kvrt; print(kvrt.__file__); "
                        "kvrt.Context().close()"], capture_output=True, text=True,
                       timeout=120, cwd=str(elsewhere),
                       env=dict(os.environ, PYTHONPATH=str(site), KVRT_LIBRARY=LIB or ""))
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(str(site))


def test_exit_with_agents_logging_from_kvrt_threads():
    """An interpreter that exits with a context still open (transfer threads
    running, a Python log callback installed) exits cleanly."""
    code = ("import sys; sys.path.insert(0, %r); import kvrt\n"
            "lines = []\n"
            "ctx = kvrt.Context(log=lambda level, text: lines.append(text), "
            "log_level=kvrt.LOG_TRACE)\n"
            "a = kvrt.xfer.Agent(ctx, b'0123456789abcdef'); "
            "b = kvrt.xfer.Agent(ctx, b'0123456789abcdef')\n"
            "peer = b.connect(a.address())\n"
            "print('open', len(lines) > 0)\n"
            % os.path.join(os.path.dirname(__file__), ".."))
    r = run(code)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "open True"
