"""Run a command under the seccomp restrictions of a systemd unit, without systemd.

    python systemd/sandbox_check.py systemd/tradingd.service -- tradingd run --config ...

Reads the unit's SystemCallFilter=, SystemCallErrorNumber=, MemoryDenyWriteExecute=,
RestrictAddressFamilies= and Environment= lines and installs, as systemd 252 does, seccomp
filters (through libseccomp, via ctypes) before exec'ing the command:

- the system-call allow list (groups expanded by `systemd-analyze syscall-filter`), every other
  call failing with the configured errno;
- MemoryDenyWriteExecute: mmap with PROT_WRITE|PROT_EXEC, mprotect/pkey_mprotect adding
  PROT_EXEC and shmat with SHM_EXEC fail with EPERM; the kernel's own PR_SET_MDWE is set too
  where the kernel has it (Linux >= 6.3);
- RestrictAddressFamilies: socket() of any other family fails with EAFNOSUPPORT.

It proves the daemon runs under the unit's system-call and memory rules. The unit's mount and
user-namespace settings (ProtectSystem, PrivateUsers, ...) need systemd itself.
Exit code 3: this machine cannot apply the filters (no libseccomp or systemd-analyze).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

UNSUPPORTED = 3
SCMP_ACT_ALLOW = 0x7FFF0000
SCMP_CMP_EQ, SCMP_CMP_GT, SCMP_CMP_MASKED_EQ = 4, 6, 7
PROT_WRITE, PROT_EXEC, SHM_EXEC = 0x2, 0x4, 0o100000
PR_SET_NO_NEW_PRIVS, PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN = 38, 65, 1
# systemd.exec(5): allowed whatever the filter says
ALWAYS = {"execve", "exit", "exit_group", "getrlimit", "rt_sigreturn", "sigreturn"}


def scmp_act_errno(code: int) -> int:
    return 0x00050000 | (code & 0xFFFF)


class ArgCmp(ctypes.Structure):
    _fields_ = [("arg", ctypes.c_uint), ("op", ctypes.c_int),
                ("datum_a", ctypes.c_uint64), ("datum_b", ctypes.c_uint64)]


def directives(unit: Path) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for raw in unit.read_text().splitlines():
        line = raw.strip()
        if line and not line.startswith(("#", ";", "[")) and "=" in line:
            key, _, value = line.partition("=")
            out.setdefault(key.strip(), []).append(value.strip())
    return out


def expand(names: list[str], seen: set[str] | None = None) -> set[str]:
    seen = set() if seen is None else seen
    calls: set[str] = set()
    for name in names:
        if not name.startswith("@"):
            calls.add(name)
            continue
        if name in seen:
            continue
        seen.add(name)
        text = subprocess.run(["systemd-analyze", "syscall-filter", "--no-pager", name],
                              capture_output=True, text=True, check=True).stdout
        members = [ln.strip() for ln in text.splitlines()[1:]
                   if ln.strip() and not ln.strip().startswith("#")]
        calls |= expand(members, seen)
    return calls


def allowed_syscalls(values: list[str]) -> set[str]:
    """systemd's rule: the first assignment decides allow- or deny-list; later '~' assignments
    remove from an allow list."""
    allowed: set[str] = set()
    for value in values:
        if value.startswith("~"):
            allowed -= expand(value[1:].split())
        else:
            allowed |= expand(value.split())
    return allowed | ALWAYS


class Seccomp:
    def __init__(self) -> None:
        name = ctypes.util.find_library("seccomp")
        if name is None:
            raise OSError("libseccomp not found")
        lib = ctypes.CDLL(name, use_errno=True)
        lib.seccomp_init.restype = ctypes.c_void_p
        lib.seccomp_init.argtypes = [ctypes.c_uint32]
        lib.seccomp_rule_add_array.argtypes = [ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int,
                                               ctypes.c_uint, ctypes.POINTER(ArgCmp)]
        lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
        lib.seccomp_load.argtypes = [ctypes.c_void_p]
        lib.seccomp_release.argtypes = [ctypes.c_void_p]
        self.lib = lib

    def nr(self, name: str) -> int:
        return int(self.lib.seccomp_syscall_resolve_name(name.encode()))

    def filter(self, default: int, rules: list[tuple[int, str, list[ArgCmp]]]) -> None:
        ctx = self.lib.seccomp_init(default)
        if not ctx:
            raise OSError("seccomp_init failed")
        try:
            for action, name, conds in rules:
                nr = self.nr(name)
                if nr < 0:
                    continue  # not a syscall on this architecture
                arr = (ArgCmp * len(conds))(*conds) if conds else None
                rc = self.lib.seccomp_rule_add_array(ctx, action, nr, len(conds), arr)
                if rc < 0:
                    raise OSError(-rc, f"seccomp_rule_add({name}) failed")
            rc = self.lib.seccomp_load(ctx)
            if rc < 0:
                raise OSError(-rc, "seccomp_load failed")
        finally:
            self.lib.seccomp_release(ctx)


def masked(arg: int, mask: int) -> ArgCmp:
    return ArgCmp(arg, SCMP_CMP_MASKED_EQ, mask, mask)


def apply(unit: Path) -> dict[str, str]:
    """Install the filters in this process; returns the unit's Environment= assignments."""
    d = directives(unit)
    sc = Seccomp()
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:  # what NoNewPrivileges= does too
        raise OSError(ctypes.get_errno(), "PR_SET_NO_NEW_PRIVS")
    if d.get("MemoryDenyWriteExecute", ["no"])[-1] in ("yes", "true", "1"):
        libc.prctl(PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN, 0, 0, 0)  # best effort: kernel >= 6.3
        deny = scmp_act_errno(errno.EPERM)
        sc.filter(SCMP_ACT_ALLOW, [
            (deny, "mmap", [masked(2, PROT_WRITE | PROT_EXEC)]),
            (deny, "mmap2", [masked(2, PROT_WRITE | PROT_EXEC)]),
            (deny, "mprotect", [masked(2, PROT_EXEC)]),
            (deny, "pkey_mprotect", [masked(2, PROT_EXEC)]),
            (deny, "shmat", [masked(2, SHM_EXEC)]),
        ])
    families = d.get("RestrictAddressFamilies")
    if families:
        keep = {int(getattr(socket, f)) for f in families[-1].split()}
        nope = scmp_act_errno(errno.EAFNOSUPPORT)
        rules = [(nope, "socket", [ArgCmp(0, SCMP_CMP_EQ, f, 0)])
                 for f in range(0, 64) if f not in keep]
        rules.append((nope, "socket", [ArgCmp(0, SCMP_CMP_GT, 63, 0)]))
        sc.filter(SCMP_ACT_ALLOW, rules)
    filters = d.get("SystemCallFilter")
    if filters:
        code = getattr(errno, d.get("SystemCallErrorNumber", ["EPERM"])[-1])
        calls = sorted(allowed_syscalls(filters))
        sc.filter(scmp_act_errno(code), [(SCMP_ACT_ALLOW, c, []) for c in calls])
    env: dict[str, str] = {}
    for value in d.get("Environment", []):
        for item in value.split():
            key, _, val = item.partition("=")
            env[key] = val
    return env


def main(argv: list[str]) -> int:
    if "--" not in argv or len(argv) < 3:
        print(__doc__, file=sys.stderr)
        return 2
    split = argv.index("--")
    unit, command = Path(argv[0]), argv[split + 1:]
    if shutil.which("systemd-analyze") is None or ctypes.util.find_library("seccomp") is None:
        print("sandbox_check: needs systemd-analyze and libseccomp", file=sys.stderr)
        return UNSUPPORTED
    env = apply(unit)
    os.execvpe(command[0], command, {**os.environ, **env})
    return 1  # not reached


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
