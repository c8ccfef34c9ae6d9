"""Where tlops keeps its working files (run folders), from the environment."""

from __future__ import annotations

import contextlib
import errno
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tlops.errors import ServiceError


def tlops_home() -> Path:
    """``$TLOPS_HOME``, else ``./.tlops`` in the current directory."""
    return Path(os.environ.get("TLOPS_HOME") or Path.cwd() / ".tlops")


def run_dir(run_id: str) -> Path:
    """The folder of one flow run's files (manifest, reports), created on demand."""
    path = tlops_home() / "runs" / run_id
    path.mkdir(parents=True, exist_ok=True)
    return path


@contextmanager
def atomic_path(path: Path, suffix: str = ".tmp") -> Iterator[Path]:
    """A unique temporary file beside ``path`` that replaces ``path`` when the block succeeds.

    The name is unique (``mkstemp``), so concurrent writers never share a temporary; it ends
    in ``suffix`` (Keras wants ``.weights.h5`` / ``.keras``, numpy ``.npz``). When the block
    fails (a full disk, a killed writer's exception) the temporary is removed.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix)
    os.close(fd)
    tmp = Path(name)
    try:
        tmp.chmod(0o644)  # mkstemp makes it private; the file it replaces was not
        yield tmp
        tmp.replace(path)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        if isinstance(exc, OSError) and exc.errno and exc.filename is None:
            # a failed write, flush or close (h5py's too) names no file: name the target
            raise OSError(exc.errno, os.strerror(exc.errno), str(path)) from exc
        raise


#: errno values of a storage failure: full disk or quota, read-only or forbidden, a path through
#: a file, a file too large, an I/O error. Anything else an ``OSError`` says stays a bug.
STORAGE_ERRNOS = frozenset(
    {
        errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.ENOTDIR,
        errno.EFBIG, errno.EIO,
    }
)  # fmt: skip


def storage_error(exc: BaseException) -> ServiceError | None:
    """The :class:`ServiceError` (exit 5) of a storage failure, naming the path and the errno;
    None for any other exception."""
    if not isinstance(exc, OSError) or exc.errno not in STORAGE_ERRNOS:
        return None
    names = (exc.filename, exc.filename2)
    where = " -> ".join(repr(str(p))[1:-1] for p in names if p is not None)  # one line
    code = errno.errorcode.get(exc.errno, str(exc.errno))
    text = os.strerror(exc.errno)  # (a library's own strerror can span lines)
    return ServiceError(f"storage failed: {where or '(path not reported)'}: {text} ({code})")


def default_cache_root() -> Path:
    """``$TLOPS_CACHE``, else ``$XDG_CACHE_HOME/tlops``, else ``~/.cache/tlops``."""
    if env := os.environ.get("TLOPS_CACHE"):
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "tlops"
