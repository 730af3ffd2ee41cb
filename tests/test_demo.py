import io

from outagewatch.demo.scenario import _demo


async def test_demo_story_comes_out_as_expected():
    """The demo makes IMAP slow and POP3 dead, heals them, sees all of it and mails it."""
    out = io.StringIO()
    assert 0 == await _demo(out)
    text = out.getvalue()
    assert "imap-demo  SLOW" in text
    assert "pop3-demo  timeout" in text
    assert "BAD now" in text
    assert "[OPEN]" in text
    assert "[RESOLVED]" in text
    assert "came out as expected" in text
