"""The kernel cache is code this process loads: private directory, private files, refusals."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

import torchopt_survey.optim as O
from torchopt_survey.optim.core import emit_c, emit_triton, fused, kernel_cache


@pytest.fixture
def fresh() -> Iterator[None]:
    """Forget every kernel loaded in this process (restored after), so steps use the disk."""
    caches: list[dict[Any, Any]] = [emit_c._KERNELS, fused._CPU_KERNELS, emit_triton._MODULES]
    saved = [dict(cache) for cache in caches]
    for cache in caches:
        cache.clear()
    yield
    for cache, entries in zip(caches, saved):
        cache.clear()
        cache.update(entries)


def step_once(cls: type = O.Adamax) -> None:
    p = torch.randn(5, requires_grad=True)
    p.grad = torch.randn(5)
    cls([p], lr=0.01, fused=True).step()


def mode(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_cache_dir_is_created_private(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                      fresh: None) -> None:
    old_umask = os.umask(0o002)  # a permissive umask must not leak into the cache
    try:
        root = tmp_path / "deep" / "cache"
        monkeypatch.setenv("TORCHOPT_SURVEY_CACHE_DIR", str(root))
        step_once()
    finally:
        os.umask(old_umask)
    assert mode(root) == 0o700
    files = list(root.iterdir())
    assert any(f.suffix == ".so" for f in files)
    for f in files:
        st = os.lstat(f)
        assert stat.S_ISREG(st.st_mode) and st.st_uid == os.getuid()
        assert not stat.S_IMODE(st.st_mode) & 0o077, f"{f.name} is {stat.S_IMODE(st.st_mode):o}"


@pytest.mark.parametrize("bits", [0o777, 0o775, 0o1777])
def test_shared_cache_dir_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                     fresh: None, bits: int) -> None:
    root = tmp_path / "shared"
    root.mkdir()
    os.chmod(root, bits)
    monkeypatch.setenv("TORCHOPT_SURVEY_CACHE_DIR", str(root))
    with pytest.raises(RuntimeError, match=rf"refusing to use {root}: it is writable by group "
                                           "or others"):
        step_once()
    assert list(root.iterdir()) == []  # nothing compiled, nothing written


def test_cache_dir_of_another_user_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                              fresh: None) -> None:
    root = tmp_path / "theirs"
    root.mkdir(mode=0o700)
    monkeypatch.setenv("TORCHOPT_SURVEY_CACHE_DIR", str(root))
    uid = os.getuid()
    monkeypatch.setattr(kernel_cache.os, "getuid", lambda: uid + 1)  # as if we were someone else
    with pytest.raises(RuntimeError, match=rf"refusing to use {root}: it is owned by uid {uid}"):
        step_once()


def _compiled(root: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("TORCHOPT_SURVEY_CACHE_DIR", str(root))
    step_once()
    (lib,) = [f for f in root.iterdir() if f.suffix == ".so"]
    emit_c._KERNELS.clear()  # the next step must go through the disk cache again
    fused._CPU_KERNELS.clear()
    return lib


def test_writable_kernel_file_is_not_loaded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                            fresh: None) -> None:
    lib = _compiled(tmp_path / "c", monkeypatch)
    os.chmod(lib, 0o666)
    with pytest.raises(RuntimeError, match=rf"refusing to load {lib}: it is writable by group"):
        step_once()
    os.chmod(lib, 0o600)
    step_once()  # private again: loaded


def test_linked_kernel_file_is_not_loaded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                          fresh: None) -> None:
    lib = _compiled(tmp_path / "c", monkeypatch)
    elsewhere = tmp_path / "elsewhere.so"
    lib.rename(elsewhere)
    lib.symlink_to(elsewhere)
    with pytest.raises(RuntimeError, match=rf"refusing to load {lib}: it is not a regular file"):
        step_once()


def test_foreign_kernel_file_is_not_loaded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                           fresh: None) -> None:
    lib = _compiled(tmp_path / "c", monkeypatch)
    real = os.lstat

    def lstat(path: object) -> os.stat_result:  # the kernel file reports another owner
        st = real(path)  # type: ignore[arg-type]
        if Path(str(path)) == lib:
            fields = list(st)
            fields[stat.ST_UID] = os.getuid() + 1
            return os.stat_result(fields)
        return st

    monkeypatch.setattr(kernel_cache.os, "lstat", lstat)
    with pytest.raises(RuntimeError, match=rf"refusing to load {lib}: it is owned by uid"):
        step_once()


def test_generated_triton_module_is_checked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                            fresh: None) -> None:
    """The Triton path imports its generated module: the same checks apply before import."""
    monkeypatch.setenv("TORCHOPT_SURVEY_CACHE_DIR", str(tmp_path))
    source = '"""generated"""\nfused_kernel = "loaded"\n'
    assert emit_triton.load_kernel(source, "test") == "loaded"
    (module,) = tmp_path.glob("triton_*.py")
    assert mode(module) == 0o600
    emit_triton._MODULES.clear()
    os.chmod(module, 0o622)
    with pytest.raises(RuntimeError, match=r"refusing to load .*triton_.*writable by group"):
        emit_triton.load_kernel(source, "test")
