"""Failures of the machine rather than of the model or the command: a full disk, a read-only folder.
They are expected (a CI runner's disk fills up), so they get an `error:` line and a hint like any
other, not an internal-error traceback."""

from __future__ import annotations

import errno

from .errors import BuildError

# errno values that mean "the file system would not take the write", whatever edgepack was writing.
DISK_ERRNOS = {
    errno.ENOSPC,
    errno.EDQUOT,
    errno.EROFS,
    errno.EFBIG,
    errno.EACCES,
    errno.EPERM,
    errno.ENAMETOOLONG,
    errno.EMFILE,
    errno.ENFILE,
    errno.EIO,
}


def disk_error(exc: OSError) -> BuildError | None:
    """The error to show for an OSError raised while reading or writing files, or None when it is not one."""
    if exc.errno not in DISK_ERRNOS:
        return None
    where = f" {exc.filename}" if exc.filename else ""
    hints = {
        errno.ENOSPC: "Free some space on that disk (or pass --out a folder on another one) and build again.",
        errno.EDQUOT: "Your disk quota is full: free some space, or pass --out a folder elsewhere.",
        errno.EFBIG: "A file grew beyond the size this system allows (ulimit -f): raise the limit and build again.",
        errno.ENAMETOOLONG: "Use a shorter --out folder or --name.",
        errno.EROFS: "Pass --out a folder on a writable file system.",
    }
    return BuildError(
        f"Could not write{where}: {exc.strerror or exc} (errno {errno.errorcode.get(exc.errno, exc.errno)}); "
        "nothing half-written was left in the output folder",
        hints.get(
            exc.errno,
            "Check the permissions and free space of the folders edgepack writes to (--out and the temporary folder).",
        ),
    )


FULL_DISK_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS}


def full_disk(exc: BaseException) -> bool:
    """A write the file system refused for lack of room (or a read-only one): no later write will do better."""
    return isinstance(exc, OSError) and exc.errno in FULL_DISK_ERRNOS
