"""The bouncer's edge without a network: the key file and the LAPI URL."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from sockgate.crowdsec.lapi import Endpoint, LapiClient, endpoint, read_key
from sockgate.errors import UsageError


def key_file(tmp_path: Path, text: str, mode: int) -> str:
    p = tmp_path / "key"
    p.write_text(text)
    p.chmod(mode)
    return str(p)


@pytest.mark.parametrize("mode", [0o600, 0o400, 0o640])
def test_a_private_key_file_is_read(tmp_path: Path, mode: int) -> None:
    assert read_key(key_file(tmp_path, "877717f7fbc9743f3d8d2c37099b5793\n", mode)) == "877717f7fbc9743f3d8d2c37099b5793"


@pytest.mark.parametrize("mode", [0o644, 0o604, 0o602, 0o601])
def test_a_key_file_open_to_others_is_refused(tmp_path: Path, mode: int) -> None:
    path = key_file(tmp_path, "k" * 32, mode)
    with pytest.raises(UsageError, match=rf"open to others \(mode 0{mode:o}\); chmod o-rwx"):
        read_key(path)


@pytest.mark.parametrize("text", ["", "\n", "two words", "key\r\nX-Evil: 1", "k\u00e9y", "k" * 5000])
def test_a_key_file_without_one_key_is_refused(tmp_path: Path, text: str) -> None:
    with pytest.raises(UsageError, match="does not hold one API key"):
        read_key(key_file(tmp_path, text, 0o600))


def test_a_key_path_that_is_no_regular_file_is_refused(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo, 0o600)
    with pytest.raises(UsageError, match="not a regular file"):
        read_key(str(fifo))  # and does not block
    with pytest.raises(UsageError, match="cannot read"):
        read_key(str(tmp_path / "missing"))


@pytest.mark.parametrize("url, expected", [
    ("http://127.0.0.1:8080", Endpoint("http", "127.0.0.1", 8080, "")),
    ("https://lapi.example:8443/crowdsec/", Endpoint("https", "lapi.example", 8443, "/crowdsec")),
    ("http://[::1]:8080/", Endpoint("http", "::1", 8080, "")),
    ("https://lapi", Endpoint("https", "lapi", 443, "")),
])
def test_lapi_urls(url: str, expected: Endpoint) -> None:
    assert endpoint(url) == expected


@pytest.mark.parametrize("url", ["ftp://x", "127.0.0.1:8080", "http://", "http://x:99999", "http://u:p@x",
                                 "http://x/?a=1", "http://x/#f", "http://x\n:80"])
def test_not_lapi_urls(url: str) -> None:
    with pytest.raises(UsageError, match="expected a LAPI URL"):
        endpoint(url)


def test_client_arguments() -> None:
    with pytest.raises(UsageError, match="CA file is for an https"):
        LapiClient("http://127.0.0.1:8080", "k", ca_file="/etc/ssl/certs/ca-certificates.crt")
    with pytest.raises(UsageError, match="visible ASCII"):
        LapiClient("http://127.0.0.1:8080", "a b")
    with pytest.raises(UsageError, match="cannot load the CA file"):
        LapiClient("https://127.0.0.1:8080", "k", ca_file="/nonexistent/ca.pem")
    assert LapiClient("http://[::1]:8080", "k").url == "http://[::1]:8080"
