"""Imports run one way (STYLE.md 12): no cycle, nothing upward, thin adapters, small modules.
Every import counts, those inside functions and under TYPE_CHECKING too (support/layers.py)."""

from __future__ import annotations

from support import layers

EDGES = layers.imports()


def _upward() -> set[tuple[str, str]]:
    return {(e.source, e.target) for e in EDGES if layers.layer_of(e.target) > layers.layer_of(e.source)}


def test_every_module_has_a_layer() -> None:
    missing = []
    for m in layers.modules():
        try:
            layers.layer_of(m)
        except KeyError:
            missing.append(m)
    assert missing == [], "add these to tests/support/layers.py LAYERS"


def test_no_new_cycle() -> None:
    """A cycle may only shrink: each one found lies inside one still listed."""
    new = [sorted(c) for c in layers.cycles(EDGES) if not any(c <= k for k in layers.KNOWN_CYCLES)]
    assert new == []


def test_no_new_upward_import() -> None:
    where = {(e.source, e.target): e.line for e in EDGES}
    new = sorted(f"{s}:{where[(s, t)]} imports {t} ({layers.LAYER_NAMES[layers.layer_of(s)]} -> "
                 f"{layers.LAYER_NAMES[layers.layer_of(t)]})" for s, t in _upward() - layers.KNOWN_UPWARD)
    assert new == []


def test_adapters_are_thin() -> None:
    breaches = {
        (e.source, e.target)
        for e in EDGES
        if e.source.startswith(layers.THIN + ".")
        and not any(e.target == p or e.target.startswith(p + ".") for p in layers.THIN_MAY_IMPORT)
    }
    assert breaches <= layers.KNOWN_THIN_BREACHES


def _filter_users() -> set[tuple[str, str]]:
    return {
        (e.source, e.target)
        for e in EDGES
        for adapter, seam in layers.SEAM_ONLY.items()
        if e.target == adapter
        and not (e.source == seam or e.source.startswith(seam + "."))
        and not e.source.startswith(layers.THIN + ".")  # adapters build on each other (bpfsys on filter)
    }


def test_only_the_seam_touches_filters() -> None:
    assert _filter_users() <= layers.KNOWN_FILTER_USERS


def test_the_ratchet_lists_only_what_still_occurs() -> None:
    """A known cycle, upward import or breach that is gone must leave the lists too."""
    found = layers.cycles(EDGES)
    assert [sorted(k) for k in layers.KNOWN_CYCLES if not any(c <= k for c in found)] == []
    assert layers.KNOWN_UPWARD <= _upward()
    assert layers.KNOWN_THIN_BREACHES <= {(e.source, e.target) for e in EDGES}
    assert layers.KNOWN_FILTER_USERS <= _filter_users()


def test_an_import_inside_a_function_is_seen() -> None:
    # the package binds Policy.guard to a function that imports sockgate.guard when first called
    assert any(e.source == "sockgate" and e.target == "sockgate.guard" for e in EDGES)


def test_modules_stay_under_600_lines() -> None:
    big = {m: n for m, p in layers.modules().items() if (n := len(p.read_text().splitlines())) > 600}
    assert big == {}
