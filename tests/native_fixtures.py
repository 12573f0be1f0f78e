"""Fixtures of the native-kernel tests: the module's state undecided and its cache in a temporary
folder (``fresh``), the kernels built there (``built``); and their error measure."""

import pytest

from aigc.models import native


@pytest.fixture
def fresh(tmp_path, monkeypatch):
    """Module state undecided, the cache (kernels.json and the built library) in a temporary
    folder; restored afterwards."""
    saved = (native._lib, native._build_error, dict(native._measured), dict(native._forced))
    native._lib = native._build_error = None
    native._measured.clear()
    native._forced.clear()
    monkeypatch.setenv("AIGC_CACHE_DIR", str(tmp_path))
    for env in native.ROUTE_ENVS.values():
        monkeypatch.delenv(env, raising=False)
    yield tmp_path
    native._lib, native._build_error = saved[:2]
    native._measured.clear()
    native._measured.update(saved[2])
    native._forced.clear()
    native._forced.update(saved[3])


@pytest.fixture
def built(fresh):
    if native._compiler() is None:
        pytest.skip("no C compiler on this machine: the native kernel cannot be built")
    lib = native._build()
    assert lib is not None, native._build_error
    return lib


def rel_error(a, b) -> float:
    """The largest difference of ``a`` from the reference ``b``, relative to ``b``'s largest value."""
    return ((a.double() - b).abs().max() / (1e-12 + b.abs().max())).item()
