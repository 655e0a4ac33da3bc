"""What the embedding client takes from its environment (providers._settle_environment): the
proxies and CA bundle, read once per session; never ~/.netrc's credentials. Real servers on
127.0.0.1, sessions as the worker makes them (``trust_env`` on)."""

from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from pgingest.providers import OpenAICompatibleProvider, ProviderError
from pgingest.testing.fake_provider import FakeEmbeddingServer

KEY = "sk-test-SECRET-7a1b2c3d"


class _Proxy(http.server.ThreadingHTTPServer):
    """Answers every request with 502 and records its request line's target (a proxy sees the
    absolute URL)."""

    def __init__(self) -> None:
        self.targets: list[str] = []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                outer.targets.append(self.path)
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                self.send_response(502)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        super().__init__(("127.0.0.1", 0), Handler)


@pytest.fixture
def proxy() -> Iterator[_Proxy]:
    server = _Proxy()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in ("http_proxy", "https_proxy", "all_proxy", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.upper(), raising=False)
    return monkeypatch


def _client(url: str, **kwargs: object) -> OpenAICompatibleProvider:
    return OpenAICompatibleProvider(
        url, "fake-768", 768, max_retries=0, retry_timeouts=False, **kwargs
    )


def test_a_netrc_entry_never_replaces_the_key(
    clean_env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """requests' own default would send ~/.netrc's login for the provider's host as basic auth
    in place of the Bearer key (the fake server, expecting the key, answers 401)."""
    netrc = tmp_path / "netrc"
    netrc.write_text("machine 127.0.0.1 login someone password not-the-key\n")
    netrc.chmod(0o600)
    clean_env.setenv("NETRC", str(netrc))
    with FakeEmbeddingServer(api_key=KEY) as srv, _client(srv.url, api_key=KEY) as p:
        assert p.embed(["a", "b"]).shape == (2, 768)
        assert p.embed(["c"]).shape == (1, 768)  # the same session, again
        assert srv.counters.with_authorization == 2


def test_proxies_from_the_environment_are_used(
    clean_env: pytest.MonkeyPatch, proxy: _Proxy
) -> None:
    clean_env.setenv("HTTP_PROXY", f"http://127.0.0.1:{proxy.server_address[1]}")
    with _client("http://embeddings.invalid/v1") as p:
        for _ in range(2):
            with pytest.raises(ProviderError):
                p.embed(["a"])
        assert p._session().trust_env is False  # read once, not per request
    assert proxy.targets == ["http://embeddings.invalid/v1/embeddings"] * 2


def test_no_proxy_from_the_environment_is_honoured(
    clean_env: pytest.MonkeyPatch, proxy: _Proxy
) -> None:
    clean_env.setenv("HTTP_PROXY", f"http://127.0.0.1:{proxy.server_address[1]}")
    clean_env.setenv("NO_PROXY", "127.0.0.1,localhost")
    with FakeEmbeddingServer() as srv, _client(srv.url) as p:
        assert p.embed(["a"]).shape == (1, 768)
    assert proxy.targets == []


def test_a_session_without_trust_env_is_left_as_it_is(
    clean_env: pytest.MonkeyPatch, proxy: _Proxy
) -> None:
    clean_env.setenv("HTTP_PROXY", f"http://127.0.0.1:{proxy.server_address[1]}")

    def plain() -> requests.Session:
        s = requests.Session()
        s.trust_env = False
        return s

    with FakeEmbeddingServer() as srv, _client(srv.url, session_factory=plain) as p:
        assert p.embed(["a"]).shape == (1, 768)
        assert p._session().proxies == {}
    assert proxy.targets == []
