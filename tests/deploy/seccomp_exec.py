"""Run a command under the unit's SystemCallFilter, the way systemd would apply it.

Usage: python seccomp_exec.py UNIT_FILE -- COMMAND...

Reads the unit's `SystemCallFilter=` lines (allow list, then `~` removals), expands the
`@groups` with `systemd-analyze syscall-filter`, and loads a seccomp filter through
libseccomp (ctypes) that allows exactly those calls and fails every other one with the
unit's `SystemCallErrorNumber` — then execs COMMAND, which inherits the filter. The
caller must have set no_new_privs (setpriv --no-new-privs) unless it is root.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import subprocess
import sys
from pathlib import Path


def groups() -> dict[str, list[str]]:
    out = subprocess.run(
        ["systemd-analyze", "syscall-filter", "--no-pager"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    found: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in out.splitlines():
        if line.startswith("@"):
            current = found.setdefault(line.strip(), [])
        elif current is not None and line.strip() and not line.strip().startswith("#"):
            current.append(line.strip())
    return found


def expand(names: list[str], table: dict[str, list[str]]) -> set[str]:
    result: set[str] = set()
    for name in names:
        if name.startswith("@"):
            result |= expand(table[name], table)
        else:
            result.add(name)
    return result


def unit_filter(unit: Path) -> tuple[set[str], int]:
    table = groups()
    allowed: set[str] = set()
    err = errno.EPERM
    for line in unit.read_text().splitlines():
        key, _, value = line.partition("=")
        if key.strip() == "SystemCallFilter":
            value = value.strip()
            if value.startswith("~"):
                allowed -= expand(value[1:].split(), table)
            else:
                allowed |= expand(value.split(), table)
        elif key.strip() == "SystemCallErrorNumber":
            err = getattr(errno, value.strip())
    return allowed, err


def load(allowed: set[str], err: int) -> int:
    lib = ctypes.CDLL(ctypes.util.find_library("seccomp") or "libseccomp.so.2", use_errno=True)
    lib.seccomp_init.restype = ctypes.c_void_p
    lib.seccomp_init.argtypes = [ctypes.c_uint32]
    lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
    lib.seccomp_rule_add.argtypes = [ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int, ctypes.c_uint]
    lib.seccomp_load.argtypes = [ctypes.c_void_p]
    scmp_act_errno = 0x00050000 | (err & 0xFFFF)
    scmp_act_allow = 0x7FFF0000
    ctx = lib.seccomp_init(scmp_act_errno)
    if not ctx:
        raise OSError("seccomp_init failed")
    n = 0
    for name in sorted(allowed):
        nr = lib.seccomp_syscall_resolve_name(name.encode())
        if nr < 0:  # not a call on this architecture
            continue
        rc = lib.seccomp_rule_add(ctx, scmp_act_allow, nr, 0)
        if rc < 0:
            raise OSError(-rc, f"seccomp_rule_add({name})")
        n += 1
    rc = lib.seccomp_load(ctx)
    if rc < 0:
        raise OSError(-rc, "seccomp_load")
    return n


def main(argv: list[str]) -> None:
    unit, sep, *command = argv
    assert sep == "--" and command, __doc__
    allowed, err = unit_filter(Path(unit))
    n = load(allowed, err)
    print(f"seccomp: {n} system calls allowed", file=sys.stderr, flush=True)
    os.execv(command[0], command)


if __name__ == "__main__":
    main(sys.argv[1:])
