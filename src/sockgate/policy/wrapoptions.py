"""What libwrap's options do when a rule is used: where they fail, and so deny.

libwrap (Debian 7.6.q, options.c) carries out a matching rule's options in order and denies
the client (``tcpd_jump``) at the first one that fails — in hosts.allow as in hosts.deny, and
before ``allow`` is reached. ``hostsaccess.py`` parses the options; this module says, from
their values and the account database alone, which of them fail. The accounts arrive as an
injected ``Accounts`` (``sockgate.loading`` passes the system's): no I/O here.

Numbers are read as glibc's ``sscanf`` reads ``%d`` and ``%o``: ``strtol``/``strtoul`` on the
digits (saturating at the ``long`` range), then the result cut to a 32-bit ``int``/``unsigned``
— so ``linger 2147483648`` is negative and denies, ``linger 4294967296`` is 0 and does not.

``user`` and ``group`` change the credentials of the process that runs libwrap. Debian's
options.c, as strace shows it, does:

    group G      getgrnam(G); setgid(gid); setgroups(0, NULL)
    user U.G     group G as above; then getpwnam(U); setuid(uid)
    user U       getpwnam(U); setuid(uid); setgid(pw_gid); initgroups(U, pw_gid)

The model is tcpd's process, which starts as root. ``setgroups`` needs CAP_SETGID, which a
``setuid`` to a uid other than 0 takes away (setuid(2)), and libwrap checks every call. So:
an unknown user or group always fails (it is reported when the files are loaded); ``user U``
without a group always fails unless U's uid is 0 (it drops root before ``initgroups``); and
once a ``user U.G`` has dropped root, every later ``user`` or ``group`` of the rule fails.
Those rules deny every client they match.

``aclexec`` (Debian) runs a command and allows or refuses by its exit status; tcpdmatch does
not run it and neither does sockgate, so a rule with it is refused rather than decided.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Sequence

from sockgate.intlist import c_value
from sockgate.policy.accounts import Accounts
from sockgate.policy.ir import Option
from sockgate.policy.source import quote

_LONG = 1 << 63
_ULONG_MAX = (1 << 64) - 1
_DIGITS = {8: re.compile(r"([+-]?)([0-7]+)"), 10: re.compile(r"([+-]?)([0-9]+)")}
_C_SPACE = " \t\n\v\f\r"  # isspace() in the C locale: what %d and %o skip first
_SETENV_SPLIT = " \t\r\n"  # options.c ``whitespace``: where setenv's name ends


def scanf_int(text: str, base: int, signed: bool) -> int | None:
    """``text`` as ``sscanf(text, "%d%c")`` (base 10, signed) or ``"%o%c"`` (base 8, unsigned)
    stores it when exactly one item converts; None when libwrap calls it a bad value."""
    m = _DIGITS[base].fullmatch(text.lstrip(_C_SPACE))
    if m is None:
        return None
    n = c_value(m.group(2), base)  # past ULONG_MAX: saturated below
    if signed:  # strtol saturates at LONG_MIN / LONG_MAX
        v = max(-_LONG, min(_LONG - 1, -n if m.group(1) == "-" else n))
    else:  # strtoul negates in unsigned arithmetic; out of range it gives ULONG_MAX
        v = _ULONG_MAX if n > _ULONG_MAX else (-n if m.group(1) == "-" else n) & _ULONG_MAX
    v &= 0xFFFFFFFF  # stored through an int * / unsigned *
    return v - (1 << 32) if signed and v >= 1 << 31 else v


def setenv_problem(value: str) -> str | None:
    """Why ``setenv value`` fails in libwrap, if it does: glibc's setenv refuses a name with
    ``=`` (EINVAL); a ``%`` expansion in the name (``%u`` is the client's ident answer) can
    bring one in, so such a name is refused too."""
    end = next((i for i, c in enumerate(value) if c in _SETENV_SPLIT), len(value))
    name = value[:end]
    if "=" in name:
        return f"setenv variable name {quote(name)} contains '=', which setenv(3) refuses"
    if "%" in name.replace("%%", ""):
        return (f"setenv variable name {quote(name)} has a % expansion, which may bring in an '='"
                " that setenv(3) refuses; name the variable literally")
    return None


DENIES = " (libwrap denies every client this rule matches)"
ACLEXEC = ("option 'aclexec' is not supported: libwrap allows or refuses by the exit status of its"
           " command, which sockgate does not run")


@dataclass(frozen=True)
class Outcome:
    """What the options of one rule do when it is used: options refused at load (unknown
    accounts, ``aclexec``), each with its message, and the first option that always fails."""

    refused: tuple[tuple[Option, str], ...] = ()
    fails: Option | None = None
    why: str = ""


def run_options(options: Sequence[Option], accounts: Accounts) -> Outcome:
    """Walk the options of one rule as libwrap, started as root, runs them. ``aclexec`` is
    refused: libwrap denies when its command exits non-zero, which no load can foresee."""
    refused: list[tuple[Option, str]] = [(o, ACLEXEC) for o in options if o.name == "aclexec"]
    root = True
    fails: tuple[Option, str] | None = None
    for o in options:
        if o.name not in ("user", "group"):
            continue
        user, dot, group = o.value.partition(".") if o.name == "user" else ("", ".", o.value)
        if dot and accounts.gid(group) is None:
            refused.append((o, f"unknown group {quote(group)}{DENIES}"))
        uid = accounts.uid(user) if o.name == "user" else 0
        if o.name == "user" and uid is None:
            refused.append((o, f"unknown user {quote(user)}{DENIES}"))
        if fails is None and not root:
            fails = (o, "root was given up by an earlier user option, so setgroups(2) fails with EPERM")
        elif fails is None and o.name == "user" and not dot and uid not in (0, None):
            fails = (o, "Debian's libwrap gives up root before initgroups(3), which then fails with EPERM"
                        " (user.group keeps it working)")
        root = root and (o.name == "group" or uid in (0, None))
    if fails is None:
        return Outcome(tuple(refused))
    return Outcome(tuple(refused), fails[0], fails[1])
