"""Faults the simulator can inject, each checked for availability on this machine.

* a size-limited tmpfs for the SQLite file, which a ballast file fills (ENOSPC for the server);
* an LD_PRELOAD shim that makes fsync/fdatasync fail with EIO while a flag file exists;
* (the kills and the PostgreSQL connection kills need nothing beyond signals and SQL.)

Each returns None with the reason when it cannot be had (not root, no compiler), so a run says
which faults it could inject instead of silently injecting fewer.
"""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
import subprocess
from pathlib import Path

SHIM_SOURCE = r"""
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <stdlib.h>
#include <unistd.h>

/* While the file named by CL_SIM_FSYNC_FLAG exists, fsync and fdatasync fail with EIO. */
static int failing(void) {
    const char *flag = getenv("CL_SIM_FSYNC_FLAG");
    return flag != NULL && access(flag, F_OK) == 0;
}

int fsync(int fd) {
    static int (*real)(int) = NULL;
    if (failing()) { errno = EIO; return -1; }
    if (real == NULL) real = (int (*)(int))dlsym(RTLD_NEXT, "fsync");
    return real(fd);
}

int fdatasync(int fd) {
    static int (*real)(int) = NULL;
    if (failing()) { errno = EIO; return -1; }
    if (real == NULL) real = (int (*)(int))dlsym(RTLD_NEXT, "fdatasync");
    return real(fd);
}
"""

FSYNC_FLAG_ENV = "CL_SIM_FSYNC_FLAG"


def fsync_shim(cache: Path) -> tuple[Path | None, str]:
    """(the compiled shim, "") or (None, why not). Built once per source into `cache`."""
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        return None, "no C compiler (cc/gcc) to build the fsync shim"
    digest = hashlib.sha256(SHIM_SOURCE.encode()).hexdigest()[:12]
    target = cache / f"failfsync-{digest}.so"
    if target.exists():
        return target, ""
    cache.mkdir(parents=True, exist_ok=True)
    source = cache / f"failfsync-{digest}.c"
    source.write_text(SHIM_SOURCE, encoding="ascii")
    partial = target.with_suffix(f".{os.getpid()}.partial")
    done = subprocess.run([compiler, "-shared", "-fPIC", "-O2", "-o", str(partial), str(source),
                           "-ldl"], capture_output=True, text=True, timeout=60, check=False)
    if done.returncode != 0:
        return None, f"the fsync shim did not compile: {done.stderr.strip()[:200]}"
    partial.replace(target)
    return target, ""


class SmallDisk:
    """A tmpfs of `size_mb` mounted at `mountpoint`; `fill()` leaves no free byte on it."""

    def __init__(self, mountpoint: Path, size_mb: int) -> None:
        self.mountpoint = mountpoint
        self.size_mb = size_mb
        self.mounted = False
        self.ballast = mountpoint / "ballast"

    def mount(self) -> str:
        """"" when mounted, else why not."""
        if os.geteuid() != 0:
            return "not root: cannot mount a size-limited tmpfs"
        self.mountpoint.mkdir(parents=True, exist_ok=True)
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={self.size_mb}m,mode=0700",
                               "tmpfs", str(self.mountpoint)], capture_output=True, text=True,
                              timeout=30, check=False)
        if done.returncode != 0:
            return f"mount -t tmpfs failed: {done.stderr.strip()[:200]}"
        self.mounted = True
        return ""

    def fill(self) -> int:
        """Write the ballast until the disk is full; the bytes written."""
        written = 0
        chunk = b"\0" * 65536
        fd = os.open(self.ballast, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            for size in (65536, 4096, 512, 1):
                while True:
                    try:
                        written += os.write(fd, chunk[:size])
                    except OSError as e:
                        if e.errno != errno.ENOSPC:
                            raise
                        break
        finally:
            os.close(fd)
        return written

    def free(self) -> None:
        self.ballast.unlink(missing_ok=True)

    def unmount(self) -> None:
        if self.mounted:
            self.free()
            subprocess.run(["umount", "-l", str(self.mountpoint)], capture_output=True,
                           timeout=30, check=False)
            self.mounted = False
