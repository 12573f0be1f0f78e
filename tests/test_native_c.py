"""The native kernels (src/aigc/assets/native/kernels.c) against float64 formulas in C
(tests/native_check.c), built the way aigc builds them, then with AddressSanitizer and
UndefinedBehaviorSanitizer, and for aarch64 (run under qemu) where a cross compiler is installed.

The Python tests compare the kernels with ATen; these compare them with written-out float64
math, catch out-of-bounds reads and writes that a comparison can miss, and show that the portable
vector code (no AVX-512) is right on another architecture. The checker is compiled at -O1 on its
own (gcc 12 for aarch64 crashes vectorizing one of its reductions); kernels.c gets the flags
under test."""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
from pathlib import Path

import pytest

from aigc.models import native

CHECK = Path(__file__).resolve().parent / "native_check.c"
# aigc's own flags (native._FLAGS) minus the shared-library ones: an executable is built here
FLAGS = [f for f in native._FLAGS if f not in ("-shared", "-fPIC")]
SANITIZE = ["-fsanitize=address,undefined", "-fno-sanitize-recover=all", "-g"]


def _run(cmd: list[str], timeout: float = 600, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kwargs)


def _child_env(extra: dict | None = None) -> dict:
    """The environment for a built program: an inherited LD_PRELOAD (a profiler's, an
    allocator's) would come before the sanitizer runtime, which refuses to start then."""
    env = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}
    return {**env, **(extra or {})}


def _require(cc: str, flags: list[str], tmp_path: Path, what: str, run: bool = False) -> None:
    """Skip unless ``cc`` builds (and, with ``run``, runs) an empty program with ``flags``:
    an older compiler without ``-march=x86-64-v3``, a sanitizer runtime that is missing or
    cannot start in this container, are the machine's limits, not the kernels' faults."""
    src, exe = tmp_path / "empty.c", tmp_path / "empty"
    src.write_text("int main(void) { return 0; }\n")
    done = _run([cc, *flags, str(src), "-o", str(exe)])
    if done.returncode != 0:
        pytest.skip(f"{cc} cannot build with {what}: {done.stderr.strip()[-300:]}")
    if run:
        try:
            ran = _run([str(exe)], timeout=60, env=_child_env({"ASAN_OPTIONS": "detect_leaks=0"}))
        except subprocess.TimeoutExpired:
            pytest.skip(f"a program built with {what} does not start here (timed out)")
        if ran.returncode != 0:
            pytest.skip(f"a program built with {what} does not start here: {ran.stderr[-300:]}")


def _build_and_check(cc: str, kernel_flags: list[str], tmp_path: Path, *,
                     link: tuple[str, ...] = (), runner: tuple[str, ...] = (),
                     env: dict | None = None) -> str:
    """Compile kernels.c with ``kernel_flags`` and the checker at -O1, link, run; the output."""
    common = [f for f in kernel_flags if f.startswith(("-fopenmp", "-fsanitize", "-fno-sanitize"))]
    objects = []
    for name, source, flags in (("kernels", native._SOURCE, kernel_flags),
                                ("check", CHECK, ["-O1", "-std=c11", *common])):
        obj = tmp_path / f"{name}.o"
        done = _run([cc, *flags, "-c", str(source), "-o", str(obj)])
        assert done.returncode == 0, f"{cc} {' '.join(flags)} {source.name}:\n{done.stderr[-3000:]}"
        objects.append(str(obj))
    exe = tmp_path / "native_check"
    done = _run([cc, *common, *link, *objects, "-o", str(exe), "-lm"])
    assert done.returncode == 0, done.stderr[-3000:]
    ran = _run([*runner, str(exe)], env=_child_env(env))
    assert ran.returncode == 0, f"native_check failed:\n{ran.stdout}\n{ran.stderr[-3000:]}"
    return ran.stdout


def _compiler() -> tuple[str, list[str]]:
    """The compiler aigc builds with and its OpenMP flag (threads with gcc, as aigc builds)."""
    cc = native._compiler()
    if cc is None:
        pytest.skip("no C compiler: aigc runs ATen's operations instead of the native kernels")
    about = _run([cc, "--version"]).stdout
    return cc, ["-fopenmp" if native._is_gcc(about) else "-fopenmp-simd"]


def test_kernels_match_float64_as_aigc_builds_them(tmp_path):
    cc, openmp = _compiler()
    out = _build_and_check(cc, [*FLAGS, *openmp], tmp_path)
    assert "GELU forward against float64" in out and "attention on 1 and 2 threads" in out


@pytest.mark.parametrize("opt", ["-O1", "-O3"])
def test_kernels_are_clean_under_address_and_undefined_behaviour_sanitizers(tmp_path, opt):
    cc, openmp = _compiler()
    flags = [opt if f == "-O3" else f for f in FLAGS]
    _require(cc, [*openmp, *SANITIZE], tmp_path, "AddressSanitizer and UBSan", run=True)
    # leak checking needs ptrace, which some containers forbid; the checker frees what it takes
    _build_and_check(cc, [*flags, *openmp, *SANITIZE], tmp_path,
                     env={"ASAN_OPTIONS": "detect_leaks=0"})


def _x86_levels() -> list[str]:
    """The x86-64 levels this CPU runs below AVX-512: v2 (SSE4.2) and, with AVX2, v3."""
    if platform.machine() not in ("x86_64", "AMD64"):
        return []
    import torch

    return ["x86-64-v2"] + (["x86-64-v3"] if torch.backends.cpu.get_cpu_capability() in
                            ("AVX2", "AVX512") else [])


@pytest.mark.parametrize("level", _x86_levels() or [pytest.param("x86-64-v2", marks=pytest.mark.skip(
    reason="not an x86-64 CPU"))])
def test_kernels_without_avx512_take_the_portable_vector_code(tmp_path, level):
    """-march=native on an AVX2 or older x86 CPU: 8-lane (AVX2) or 4-lane (SSE) vectors, the
    register tiles sized for 16 registers, and no AVX-512 instruction (the rounding and scaling
    fall back to plain vector arithmetic, the reciprocal to AVX's estimate or a division)."""
    cc, openmp = _compiler()
    flags = [f"-march={level}" if f == "-march=native" else f for f in FLAGS]
    _require(cc, [f"-march={level}"], tmp_path, f"-march={level}")
    _build_and_check(cc, [*flags, *openmp], tmp_path)


@pytest.mark.skipif(not (shutil.which("aarch64-linux-gnu-gcc") and shutil.which("qemu-aarch64")),
                    reason="Debian gcc-aarch64-linux-gnu and qemu-user not installed")
def test_kernels_on_aarch64_under_qemu(tmp_path):
    flags = ["-march=armv8.2-a" if f == "-march=native" else f for f in FLAGS]
    out = _build_and_check("aarch64-linux-gnu-gcc", [*flags, "-fopenmp"], tmp_path,
                           link=("-static",), runner=("qemu-aarch64",))
    assert "attention backward against float64" in out
