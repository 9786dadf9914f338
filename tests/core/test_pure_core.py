"""The pure core (policy/, decide, bpf/, export/) does no I/O: proved by importing it in a fresh
interpreter and by reading its imports."""

from __future__ import annotations

from support.purity import SRC, imported, loaded_by, under

CORE_PACKAGES = ("sockgate.policy", "sockgate.bpf", "sockgate.ebpf", "sockgate.export")
CORE_MODULES = ("sockgate.decide", "sockgate.explain", "sockgate.peers", "sockgate.proxy.admission", "sockgate.bans",
                "sockgate.crowdsec", "sockgate.crowdsec.stream", "sockgate.crowdsec.session")
FORBIDDEN_LOADED = ("socket", "_socket", "ctypes", "_ctypes", "asyncio", "select", "selectors", "subprocess")
FORBIDDEN_IMPORTS = FORBIDDEN_LOADED + ("os", "pathlib", "shutil", "pwd", "grp", "io", "sockgate.linux", "sockgate.loading", "sockgate.guard")


def core_modules() -> list[str]:
    names = list(CORE_MODULES)
    for pkg in CORE_PACKAGES:
        base = SRC / pkg.replace(".", "/")
        for path in sorted(base.rglob("*.py")):
            rel = path.relative_to(SRC).with_suffix("")
            parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
            names.append(".".join(parts))
    return names


def test_importing_the_core_loads_no_io_module() -> None:
    modules = core_modules()
    assert "sockgate.policy.parser" in modules and "sockgate.policy.lint" in modules
    loaded = loaded_by(modules)
    bad = sorted(m for m in loaded if m in FORBIDDEN_LOADED or m.startswith("sockgate.linux"))
    assert bad == []


def test_core_sources_import_no_io_module() -> None:
    offenders = []
    for name in core_modules():
        path = SRC / name.replace(".", "/")
        file = path / "__init__.py" if path.is_dir() else path.with_suffix(".py")
        offenders += [f"{name}: import {t}" for t in imported(file) if under([t], FORBIDDEN_IMPORTS)]
    assert offenders == []
