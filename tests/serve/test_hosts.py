"""--allowed-hosts: against DNS rebinding, a server answers only the Host names it was told (by default its bound
address and localhost); any other Host header gets a 400."""

from __future__ import annotations

import httpx
import pytest

from textdiffusion.core.errors import UserError
from textdiffusion.serve.middleware import default_hosts, host_allowed, parse_hosts


def test_only_allowed_hosts_are_answered(tiny_server):
    with tiny_server(allowed_hosts=["127.0.0.1", "localhost", "*.example.org"]) as (url, _):
        port = url.rsplit(":", 1)[1]
        for host in (f"127.0.0.1:{port}", f"localhost:{port}", "LOCALHOST", "api.example.org:443"):
            assert httpx.get(f"{url}/health", headers={"Host": host}).status_code == 200, host
        for host in (f"evil.example:{port}", "example.org", "localhost.evil.example", "127.0.0.2"):
            response = httpx.post(f"{url}/v1/completions", headers={"Host": host}, json={"model": "tiny"})
            assert response.status_code == 400, host
            assert response.json()["error"]["code"] == "invalid_host" and response.json()["error"]["param"] == "Host"


def test_default_hosts():
    assert default_hosts("127.0.0.1") == ["127.0.0.1", "localhost"]
    assert default_hosts("::1") == ["::1", "localhost"] and host_allowed("[::1]:8000", default_hosts("::1"))
    assert default_hosts("0.0.0.0") is None and default_hosts("::") is None  # every interface: any name
    assert parse_hosts("a.org, b.org", "127.0.0.1") == ["a.org", "b.org"]
    assert parse_hosts("*", "127.0.0.1") is None and parse_hosts(None, "127.0.0.1") == ["127.0.0.1", "localhost"]
    for bad in ("", "a.org,", "http://a.org"):
        with pytest.raises(UserError, match="--allowed-hosts"):
            parse_hosts(bad, "127.0.0.1")
