"""``sockgate agent``'s CrowdSec options: what is refused before anything starts."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import pytest

from sockgate.agent.crowdfeed import CrowdsecFeed
from sockgate.cli.agent import add_parser, crowdsec_feed
from sockgate.errors import UsageError


def args(*argv: str) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    add_parser(p)
    return p.parse_args(["policy", *argv])


def key(tmp_path: Path, mode: int = 0o600) -> str:
    path = tmp_path / "key"
    path.write_text("abcdef0123456789\n")
    os.chmod(path, mode)
    return str(path)


def test_no_crowdsec_is_no_feed_and_its_options_alone_are_refused(tmp_path: Path) -> None:
    assert crowdsec_feed(args()) is None
    with pytest.raises(UsageError, match="--crowdsec-exempt is for --crowdsec URL"):
        crowdsec_feed(args("--crowdsec-exempt", "ssh"))


@pytest.mark.parametrize(("extra", "message"), [
    ((), "needs --crowdsec-key-file"),
    (("--crowdsec-interval", "0"), "--crowdsec-interval must be"),
])
def test_bad_combinations_are_one_line_errors(tmp_path: Path, extra: tuple[str, ...], message: str) -> None:
    argv = ("--crowdsec", "http://127.0.0.1:8080", *extra)
    if extra:
        argv += ("--crowdsec-key-file", key(tmp_path))
    with pytest.raises(UsageError, match=message):
        crowdsec_feed(args(*argv))


def test_a_key_file_others_may_read_is_refused(tmp_path: Path) -> None:
    with pytest.raises(UsageError):
        crowdsec_feed(args("--crowdsec", "http://127.0.0.1:8080", "--crowdsec-key-file", key(tmp_path, 0o644)))


def test_a_good_set_makes_a_feed_with_its_interval_and_exempt_services(tmp_path: Path) -> None:
    feed = crowdsec_feed(args("--crowdsec", "http://127.0.0.1:8080", "--crowdsec-key-file", key(tmp_path),
                              "--crowdsec-interval", "1", "--crowdsec-exempt", "ssh"))
    assert isinstance(feed, CrowdsecFeed)
    assert feed.session.interval_s == 1 and feed.exempt == ("ssh",)
    assert feed.status(lambda ns: 0.0)["state"] == "starting"
