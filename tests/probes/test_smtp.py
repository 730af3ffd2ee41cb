from __future__ import annotations

from tests.conftest import make_target
from tests.helpers.smtpd import PASSWORD, USER, start_smtpd

from outagewatch.model import Phase, Result
from outagewatch.probes import run_probe


def smtp(port, ca, **fields):
    return make_target(type="smtp", host="localhost", port=port, ca_file=str(ca), **fields)


class TestSmtpProbe:
    async def test_starttls_and_auth(self, smtpd, probe_ctx, tls_files):
        """STARTTLS, a second EHLO and AUTH all happen and are timed."""
        sample = await run_probe(
            smtp(smtpd.port, tls_files["ca"], username=USER, password=PASSWORD), probe_ctx,
            timeout=5)
        assert Result.OK == sample.result, sample.detail
        for phase in (Phase.CONNECT, Phase.GREETING, Phase.EHLO, Phase.STARTTLS, Phase.LOGIN,
                      Phase.LOGOUT):
            assert phase in sample.phases
        assert sample.cert_expiry is not None

    async def test_implicit_tls_splits_handshake_from_banner(self, smtpd, probe_ctx, tls_files):
        """On port 465 style TLS the handshake and the banner are separate phases."""
        sample = await run_probe(
            smtp(smtpd.implicit_port, tls_files["ca"], tls="implicit"), probe_ctx, timeout=5)
        assert Result.OK == sample.result, sample.detail
        assert sample.phases[Phase.TLS] > 0
        assert Phase.GREETING in sample.phases

    async def test_plain_without_credentials(self, smtpd, probe_ctx, tls_files):
        """tls: none with no username: banner, EHLO, QUIT; no AUTH is attempted."""
        sample = await run_probe(smtp(smtpd.port, tls_files["ca"], tls="none"), probe_ctx,
                                 timeout=5)
        assert Result.OK == sample.result
        assert Phase.LOGIN not in sample.phases

    async def test_wrong_password(self, smtpd, probe_ctx, tls_files):
        """A refused login is 'auth' in the login phase, with the server's answer."""
        sample = await run_probe(
            smtp(smtpd.port, tls_files["ca"], username=USER, password="wrong-password"),
            probe_ctx, timeout=5)
        assert (Result.AUTH, Phase.LOGIN) == (sample.result, sample.phase)
        assert "535" in sample.detail
        assert "wrong-password" not in sample.detail

    async def test_starttls_not_offered_is_a_failure(self, server_tls, probe_ctx, tls_files):
        """tls: starttls never falls back to plaintext when STARTTLS is missing."""
        server = await start_smtpd(server_tls, offer_starttls=False)
        try:
            sample = await run_probe(
                smtp(server.port, tls_files["ca"], username=USER, password=PASSWORD),
                probe_ctx, timeout=5)
        finally:
            await server.stop()
        assert (Result.TLS, Phase.EHLO) == (sample.result, sample.phase)
        assert "STARTTLS" in sample.detail

    async def test_untrusted_certificate(self, smtpd, probe_ctx):
        """STARTTLS to a certificate the system does not trust fails as 'tls'."""
        target = make_target(type="smtp", host="localhost", port=smtpd.port)
        sample = await run_probe(target, probe_ctx, timeout=5)
        assert (Result.TLS, Phase.STARTTLS) == (sample.result, sample.phase)
