"""Fixtures of the native-kernel tests: the module's state undecided and its cache in a temporary
folder (``fresh``), the kernels built there (``built``); and their error measure."""

import shutil

import pytest

from aigc.models import native


def _save_state():
    return (native._lib, native._lib_path, native._build_error, native._threaded,
            dict(native._measured), dict(native._forced))


def _restore_state(saved) -> None:
    native._lib, native._lib_path, native._build_error, native._threaded = saved[:4]
    native._measured.clear()
    native._measured.update(saved[4])
    native._forced.clear()
    native._forced.update(saved[5])


def _undecided(monkeypatch, cache_dir) -> None:
    native._lib = native._lib_path = native._build_error = None
    native._measured.clear()
    native._forced.clear()
    monkeypatch.setenv("AIGC_CACHE_DIR", str(cache_dir))
    for env in native.ROUTE_ENVS.values():
        monkeypatch.delenv(env, raising=False)


@pytest.fixture
def fresh(tmp_path, monkeypatch):
    """Module state undecided, the cache (kernels.json and the built library) in a temporary
    folder; restored afterwards."""
    saved = _save_state()
    _undecided(monkeypatch, tmp_path)
    yield tmp_path
    _restore_state(saved)


@pytest.fixture(scope="session")
def _compiled_once(tmp_path_factory):
    """The folder of a library this session compiled once (``native/<digest>/``, as
    ``native._build`` names it), or ``None`` when it could not: compiling takes 4-8 s on these
    machines, and ``built`` is the setup of some 80 tests. The tests of building itself
    (a killed build, a failing self-check, the flags) use ``fresh`` and compile for real."""
    if native._compiler() is None:
        return None
    saved = _save_state()
    with pytest.MonkeyPatch.context() as mp:
        _undecided(mp, tmp_path_factory.mktemp("native-once"))
        lib = native._build()
        folder = native._lib_path.parent if lib is not None else None
    _restore_state(saved)
    return folder


@pytest.fixture
def built(fresh, _compiled_once):
    """The kernels loaded from ``fresh``'s cache, as a first build leaves them there: a copy of
    the session's compiled library (loaded and self-checked again here, a distinct file, so a
    test that changes its copy changes no other test's), compiled here when there is none."""
    if native._compiler() is None:
        pytest.skip("no C compiler on this machine: the native kernel cannot be built")
    if _compiled_once is not None:
        shutil.copytree(_compiled_once, fresh / "native" / _compiled_once.name)
    lib = native._build()
    assert lib is not None, native._build_error
    return lib


def rel_error(a, b) -> float:
    """The largest difference of ``a`` from the reference ``b``, relative to ``b``'s largest value."""
    return ((a.double() - b).abs().max() / (1e-12 + b.abs().max())).item()
