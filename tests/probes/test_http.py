from __future__ import annotations

import pytest
from tests.helpers.targets import make_target

from outagewatch.model import Phase, Result
from outagewatch.probes import run_probe


class TestHttpProbe:
    async def test_ok_with_phases(self, http_server, probe_ctx):
        """A healthy page is ok, with connect, first_byte and transfer timed."""
        target = make_target(type="http", url=f"http://localhost:{http_server.port}/",
                             expect_body="App Suite")
        sample = await run_probe(target, probe_ctx, timeout=5)
        assert Result.OK == sample.result
        assert {Phase.DNS, Phase.CONNECT, Phase.FIRST_BYTE, Phase.TRANSFER} <= set(sample.phases)
        assert sum(sample.phases.values()) <= sample.duration + 0.001

    async def test_https_verified_with_cert_expiry(self, http_server, probe_ctx, tls_files):
        """HTTPS verifies against the configured CA and reports the certificate's expiry."""
        target = make_target(type="http", url=f"https://localhost:{http_server.tls_port}/",
                             ca_file=str(tls_files["ca"]))
        sample = await run_probe(target, probe_ctx, timeout=5)
        assert Result.OK == sample.result
        assert sample.cert_expiry is not None
        assert sample.cert_expiry > 2_000_000_000

    async def test_untrusted_certificate(self, http_server, probe_ctx):
        """A certificate the system CAs do not trust is a TLS failure, not a pass."""
        target = make_target(type="http", url=f"https://localhost:{http_server.tls_port}/")
        sample = await run_probe(target, probe_ctx, timeout=5)
        assert (Result.TLS, Phase.CONNECT) == (sample.result, sample.phase)

    async def test_tls_verify_off(self, http_server, probe_ctx):
        """tls_verify: false accepts an untrusted certificate (explicitly, per target)."""
        target = make_target(type="http", url=f"https://localhost:{http_server.tls_port}/",
                             tls_verify=False)
        sample = await run_probe(target, probe_ctx, timeout=5)
        assert Result.OK == sample.result

    @pytest.mark.parametrize(("path", "expect", "result"), [
        ("/status/500", None, Result.STATUS),
        ("/status/404", None, Result.STATUS),
        ("/status/204", None, Result.OK),
        ("/status/503", [503], Result.OK),
        ("/", [201], Result.STATUS),
    ])
    async def test_status(self, http_server, probe_ctx, path, expect, result):
        """Any 2xx passes by default; expect_status lists exactly what passes."""
        target = make_target(type="http", url=f"http://127.0.0.1:{http_server.port}{path}",
                             expect_status=expect)
        sample = await run_probe(target, probe_ctx, timeout=5)
        assert result == sample.result
        if result is Result.STATUS:
            assert Phase.FIRST_BYTE == sample.phase
            assert "status" in sample.detail

    async def test_body_mismatch(self, http_server, probe_ctx):
        """A page that answers 200 but not the expected content fails as 'body'."""
        target = make_target(type="http", url=f"http://127.0.0.1:{http_server.port}/",
                             expect_body="Roundcube")
        sample = await run_probe(target, probe_ctx, timeout=5)
        assert (Result.BODY, Phase.TRANSFER) == (sample.result, sample.phase)

    async def test_redirects_followed_and_bounded(self, http_server, probe_ctx):
        """Redirects are followed up to max_redirects; more is a status failure."""
        url = f"http://127.0.0.1:{http_server.port}/redirect/3"
        ok = await run_probe(make_target(type="http", url=url, expect_body="App Suite"),
                             probe_ctx, timeout=5)
        too_many = await run_probe(make_target(type="http", url=url, max_redirects=2),
                                   probe_ctx, timeout=5)
        not_followed = await run_probe(make_target(type="http", url=url, max_redirects=0),
                                       probe_ctx, timeout=5)
        assert Result.OK == ok.result
        assert Result.STATUS == too_many.result
        assert Result.STATUS == not_followed.result

    async def test_large_body_read_is_bounded(self, http_server, probe_ctx):
        """A 4 MiB body costs one MiB of reading; the match runs on that first MiB."""
        target = make_target(type="http", url=f"http://127.0.0.1:{http_server.port}/big",
                             expect_body="x{100}")
        sample = await run_probe(target, probe_ctx, timeout=5)
        assert Result.OK == sample.result

    async def test_slow_page_is_timed(self, http_server, probe_ctx):
        """The wait for a slow page is counted as first_byte."""
        target = make_target(type="http", url=f"http://127.0.0.1:{http_server.port}/slow?s=0.3")
        sample = await run_probe(target, probe_ctx, timeout=5)
        assert Result.OK == sample.result
        assert 0.3 <= sample.phases[Phase.FIRST_BYTE] < 0.5

    async def test_no_keep_alive(self, http_server, probe_ctx):
        """Every run opens a new connection, so connect is measured every time."""
        target = make_target(type="http", url=f"http://127.0.0.1:{http_server.port}/")
        for _ in range(3):
            sample = await run_probe(target, probe_ctx, timeout=5)
            assert Phase.CONNECT in sample.phases
