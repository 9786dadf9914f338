"""hosts_access(5) string matching, as libwrap's ``hosts_access.c`` does it.

Host-name patterns (``.domain`` suffixes, ``prefix.`` address prefixes, ``*``/``?``
wildcards, exact names) and the KNOWN/UNKNOWN/PARANOID/LOCAL classes, case-insensitive.
Pure: the name arrives already resolved (or None when unknown).
"""

from __future__ import annotations

import fnmatch

from sockgate.policy.ir import HostPattern, IPAddress


def _glob(pattern: str, text: str) -> bool:
    return fnmatch.fnmatchcase(text.lower(), pattern.lower().replace("[", "[[]"))


def string_matches(pattern: str, text: str) -> bool:
    """libwrap ``string_match``: ``.suffix``, ``prefix.``, wildcards, or exact (no case)."""
    p = pattern.lower()
    t = text.lower()
    if p.startswith("."):
        return t.endswith(p)
    if p == "all":
        return True
    if "*" in p or "?" in p:
        return _glob(p, t)
    if p.endswith("."):
        return t.startswith(p)
    return p == t


def pattern_matches(m: HostPattern, name: str | None, address: IPAddress | None) -> bool:
    if name is not None and string_matches(m.pattern, name):
        return True
    if m.hosts_access and address is not None:
        return string_matches(m.pattern, str(address))
    return False


def class_matches(kind: str, name: str | None, verified: bool, address: IPAddress | None) -> bool:
    known_name = name is not None and verified
    if kind == "KNOWN":
        return known_name and address is not None
    if kind == "UNKNOWN":
        return not known_name or address is None
    if kind == "PARANOID":
        return name is not None and not verified
    if kind == "LOCAL":
        return known_name and "." not in name  # type: ignore[operator]
    raise ValueError(kind)


def user_matches(pattern: str, user: str | None) -> bool:
    p = pattern.upper()
    if p == "ALL":
        return True
    if p == "KNOWN":
        return user is not None and user != "unknown"
    if p == "UNKNOWN":
        return user is None or user == "unknown"
    return user is not None and string_matches(pattern, user)


def daemon_name_matches(pattern: str, service: str) -> bool:
    return pattern.upper() == "ALL" or string_matches(pattern, service)
