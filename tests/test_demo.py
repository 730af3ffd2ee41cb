import asyncio
import io
import re

import aiohttp

from outagewatch.demo.scenario import _demo


async def test_demo_story_comes_out_as_expected():
    """The demo makes IMAP slow and POP3 dead, heals them, sees all of it and mails it; its
    status page is reachable at the URL it prints while it runs, and shows the outage."""
    out = io.StringIO()
    demo = asyncio.create_task(_demo(out))
    pages: list[tuple[int, str]] = []
    async with aiohttp.ClientSession() as session:
        while not demo.done():
            await asyncio.sleep(0.1)
            text = out.getvalue()
            url = re.search(r"Status page: (http://127\.0\.0\.1:\d+/) ", text)
            if url and "[OPEN]" in text and not pages:
                async with session.get(url.group(1)) as response:
                    pages.append((response.status, await response.text()))
    assert 0 == await demo
    text = out.getvalue()
    assert "imap-demo  SLOW" in text
    assert "pop3-demo  timeout" in text
    assert "BAD now" in text
    assert "[OPEN]" in text
    assert "[RESOLVED]" in text
    assert "came out as expected" in text
    assert len(pages) == 1
    status, page = pages[0]
    assert 200 == status
    assert "Open incidents" in page
    assert "pop3-demo" in page
    assert "Major outage" in page
