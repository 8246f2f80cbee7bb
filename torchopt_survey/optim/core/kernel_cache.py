"""The on-disk kernel cache: generated code that this process will load and run.

A compiled kernel is loaded with ``ctypes`` (CPU) and a generated Triton module is imported
(CUDA), so whoever can write to the cache can run code in every process that uses it. Hence:

* the directory (``$TORCHOPT_SURVEY_CACHE_DIR``, else ``$XDG_CACHE_HOME/torchopt_survey`` or
  ``~/.cache/torchopt_survey``) is created with mode 0700;
* an existing directory is used only if it is ours (same uid) and writable by nobody else, and a
  file is loaded only if it is a regular file (not a link), ours, and writable by nobody else --
  anything else is refused with a :class:`RuntimeError` that says why and what to do;
* files are written private (0600/0700) under a temporary name and renamed into place, so a
  concurrent process never loads a partial file.
"""

from __future__ import annotations

import os
import stat
import tempfile
from pathlib import Path

#: compile events, (kernel label, seconds, from_disk_cache); tests and the benchmark read them
COMPILE_LOG: list[tuple[str, float, bool]] = []

_ENV = "TORCHOPT_SURVEY_CACHE_DIR"


def _problem(st: os.stat_result) -> str | None:
    """Why a file or directory with this status must not be trusted (None: it may)."""
    if st.st_uid != os.getuid():
        return f"it is owned by uid {st.st_uid}, not by this user (uid {os.getuid()})"
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        return f"it is writable by group or others (mode {stat.S_IMODE(st.st_mode):o})"
    return None


def cache_dir() -> Path:
    """The private cache directory (created 0700 on first use; refused if not private)."""
    root = os.environ.get(_ENV)
    if root:
        path = Path(root)
    else:
        base = os.environ.get("XDG_CACHE_HOME") or os.path.join(Path.home(), ".cache")
        path = Path(base) / "torchopt_survey"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            path.mkdir(mode=0o700)
        except FileExistsError:  # another process made it first: checked below like any other
            pass
        else:
            os.chmod(path, 0o700)  # (mkdir's mode is filtered by the umask; make it exact)
    st = os.stat(path)
    if not stat.S_ISDIR(st.st_mode):
        raise RuntimeError(f"fused kernel cache: {path} is not a directory (set ${_ENV})")
    why = _problem(st)
    if why is not None:
        raise RuntimeError(
            f"fused kernel cache: refusing to use {path}: {why}. Compiled kernels are loaded "
            f"from it and run in this process, so it must be private: make it owned by you "
            f"and not writable by others (chmod 700), or set ${_ENV} to a private directory."
        )
    return path


def check_loadable(path: Path) -> None:
    """Refuse to load ``path`` unless it is a regular file that only this user can write."""
    st = os.lstat(path)
    if not stat.S_ISREG(st.st_mode):
        why: str | None = "it is not a regular file (a link or special file)"
    else:
        why = _problem(st)
    if why is not None:
        raise RuntimeError(
            f"fused kernel cache: refusing to load {path}: {why}. Delete it (it is rebuilt) "
            f"or set ${_ENV} to a private directory."
        )


def private_temp(directory: Path, suffix: str) -> Path:
    """A new empty file only this user can read or write, in ``directory``."""
    fd, name = tempfile.mkstemp(suffix=suffix, dir=directory)  # mkstemp creates it 0600
    os.close(fd)
    return Path(name)


def write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically, with mode 0600."""
    tmp = private_temp(path.parent, ".tmp")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
