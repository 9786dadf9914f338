"""Hostile strings in a policy change only comment text in the exported rulesets.

File paths, rule text, service names, set names and Unix paths come from whoever writes the
policy or names its file; a newline in one once ended a ``#`` comment and left a bare
``accept`` rule behind. The property: a policy dressed in hostile strings exports to exactly
the rules of the same policy dressed in plain ones (service and set names replaced by what
they become as identifiers), line for line, with the same number of comment lines. nft's own
parser checks the hostile output in tests/kernel/test_nft_kernel.py.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sockgate.cli.main import main as cli_main
from sockgate.export import ExportFormat as Format, export
from sockgate.policy.ir import Policy
from sockgate.policy.parser import parse_policy
from support.export_policies import Dress, dress, dresses, policies


def _split(text: str) -> tuple[list[str], int]:
    lines = text.split("\n")
    assert lines.pop() == ""
    comments = [line for line in lines if line.lstrip().startswith("#")]
    return [line for line in lines if not line.lstrip().startswith("#")], len(comments)


def check_only_comments_differ(policy: Policy, d: Dress, fmt: Format, action: str) -> str:
    """Export ``policy`` dressed hostile and plain; return the hostile text."""
    result = export(dress(policy, d), fmt, action=action, skip_userspace=True)  # type: ignore[arg-type]
    bad = result.text
    good = export(dress(policy, d.plain()), fmt, action=action, skip_userspace=True).text  # type: ignore[arg-type]
    assert _split(bad) == _split(good), bad
    assert all(w.isprintable() for w in result.warnings), result.warnings  # they reach a terminal
    for line in bad.split("\n"):
        assert line.replace("\t", " ").isprintable(), repr(line)
        assert not (line.lstrip().startswith("#") and line.endswith("\\")), repr(line)
    return bad


@settings(max_examples=150, deadline=None)
@given(policy=policies(userspace=True), d=dresses(), fmt=st.sampled_from(["nft", "pf"]), action=st.sampled_from(["drop", "reject"]))
def test_hostile_strings_change_only_comments(policy: Policy, d: Dress, fmt: Format, action: str) -> None:
    check_only_comments_differ(policy, d, fmt, action)


POLICY = "set lan = { 10.0.0.0/8 }\nservice ssh tcp/22 {\n    allow @lan\n    default deny\n}\n"


@pytest.mark.parametrize("fmt", ["nft", "pf"])
def test_a_newline_in_the_policy_path_adds_no_rule(tmp_path: Path, capsys: pytest.CaptureFixture[str], fmt: str) -> None:
    outputs = []
    for name in ("a\naccept\nb.policy", "x.policy"):
        src = tmp_path / name
        src.write_text(POLICY)
        assert cli_main(["export", "-f", fmt, str(src)]) == 0
        outputs.append(capsys.readouterr().out)
    assert _split(outputs[0]) == _split(outputs[1])
    assert f"# {tmp_path}/a?accept?b.policy:3: allow @lan" in outputs[0]


def test_an_undecodable_path_is_shown_not_a_traceback(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = Path(os.fsdecode(os.fsencode(tmp_path / "bad") + b"\xff.policy"))
    src.write_text(POLICY)
    out = tmp_path / "out.nft"
    assert cli_main(["export", "-f", "nft", str(src), "-o", str(out)]) == 0
    assert f"\t\t# {tmp_path}/bad?.policy:3: allow @lan\n" in out.read_text()


def test_hostile_daemon_names_from_hosts_access_and_map(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    allow = tmp_path / "hosts\nallow"
    allow.write_text('a#b;accept}"\\: 10.0.0.0/8\n')
    for fmt in ("nft", "pf"):
        argv = ["export", "-f", fmt, "--hosts-allow", str(allow), "--map", 'a#b;accept}"\\=tcp/22']
        assert cli_main(argv) == 0
        text = capsys.readouterr().out
        rules = [line.strip() for line in _split(text)[0] if "10.0.0.0/8" in line or "ffff" in line]
        if fmt == "nft":
            assert "chain svc_a_b_accept___ {" in text
            assert rules == ["ip6 saddr ::ffff:0:0/96 drop", "ip saddr 10.0.0.0/8 accept"]
        else:
            assert rules == [
                "block drop in quick proto tcp from ::ffff:0:0/96 to self port 22",
                "pass in quick proto tcp from 10.0.0.0/8 to self port 22",
            ]
        assert ('# service a#b;accept}"?' if fmt == "nft" else '# service a#b;accept}"\\: tcp/22') in [line.strip() for line in text.splitlines()]


def test_plain_dress_is_what_the_identifiers_say() -> None:
    pol = parse_policy(POLICY, "p.policy")
    d = Dress("f\nf", "t\nt", "/p", ("ss h\n",), ("l an",))
    text = check_only_comments_differ(pol, d, "nft", "drop")
    assert "\tchain svc_ss_h_ {" in text and "\t\tip saddr @l_an_v4 accept" in text
    assert "\t\t# f?f:3: t?t" in text


def test_names_in_usage_errors_and_warnings_are_printable(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # they reach a terminal: no escape sequence, no line break
    allow = tmp_path / "hosts.allow"
    allow.write_text("a\x1bb: 10.0.0.0/8\nportmap: .example.com\n")
    assert cli_main(["export", "-f", "nft", "--hosts-allow", str(allow)]) == 2
    assert capsys.readouterr().err.startswith("sockgate: no port known for a?b, portmap: ")
    native = tmp_path / "n\x07.policy"
    native.write_text("service a tcp/1 {\n    allow host .example.com\n}\n")
    assert cli_main(["export", "-f", "pf", str(native), "--skip-userspace", "--map", "b\x1b=tcp/2"]) == 2
    assert capsys.readouterr().err == "sockgate: --map b?: the policy has no service b? and no hosts_access rules that could apply to it\n"
    assert cli_main(["export", "-f", "pf", str(native), "--skip-userspace"]) == 0
    assert capsys.readouterr().err.startswith(f"sockgate: warning: {tmp_path}/n?.policy:2: left out of the pf rules")
