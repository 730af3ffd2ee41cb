"""Server-side render time of the status page: 1,000 targets, 24 h of 5-minute response-time
buckets and 90 days of daily bars each (synthetic StatusSource data, no I/O).

    python -m bench.status_page [--targets 1000] [--runs 10]

The view model remembers each service's chart and bars by their data (a service's data
changes once a 5-minute bucket, its bars once a day), so three cases are measured:
cold (nothing remembered: the first request after a start), steady (a third of the services
have a new bucket since the last request, as with a 60 s refresh and 5-minute buckets spread
over the period) and warm (nothing changed). The target is under 200 ms (issue 13).
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import statistics
import time

from tests.helpers.statusdata import synthetic

from outagewatch.statuspage import view
from outagewatch.statuspage.render import render_page
from outagewatch.statuspage.view import CHART_SPAN, DAY, HISTORY_DAYS, build_page


async def measure(targets: int, runs: int) -> None:
    source = synthetic(targets)
    now = source.now()
    times = await source.response_times(now - CHART_SPAN)
    daily = await source.daily(HISTORY_DAYS)
    incidents = await source.incidents(now - HISTORY_DAYS * DAY)
    windows = await source.windows(now)

    def once(data: dict) -> tuple[float, float, str]:
        """CPU seconds (the machine may be shared: wall time would count the others)."""
        t0 = time.process_time()
        page = build_page(title="Bench", public=True, now=now, platforms=source.platforms(),
                          services=source.services(), response_times=data, daily=daily,
                          incidents=incidents, windows=windows)
        t1 = time.process_time()
        html = render_page(page)
        return t1 - t0, time.process_time() - t1, html

    def clear() -> None:
        view._chart.cache_clear()
        view._bars.cache_clear()

    once(times)  # templates compiled
    results: dict[str, list[tuple[float, float]]] = {"cold": [], "steady": [], "warm": []}
    html = ""
    for run in range(runs):
        clear()
        v, r, html = once(times)
        results["cold"].append((v, r))
        v, r, _ = once(times)
        results["warm"].append((v, r))
        changed = dict(times)  # a new last bucket for a third of the services
        for index, name in enumerate(sorted(times)):
            if index % 3 == run % 3:
                changed[name] = [*times[name][1:], (now, 0.1 + run / 1000, False)]
        v, r, _ = once(changed)
        results["steady"].append((v, r))
    size = len(html.encode())
    print(f"status page, {targets} targets, 288 buckets and {HISTORY_DAYS} days each, "
          f"{runs} runs (median CPU ms):")
    print("  case     view model   Jinja2   total")
    for case, values in results.items():
        views, renders = [v for v, _ in values], [r for _, r in values]
        totals = [v + r for v, r in values]
        print(f"  {case:7} {statistics.median(views) * 1000:10.1f} "
              f"{statistics.median(renders) * 1000:8.1f} {statistics.median(totals) * 1000:7.1f}")
    packed = len(gzip.compress(html.encode(), 6))
    print(f"  page size {size / 1e6:.2f} MB, gzip {packed / 1e6:.2f} MB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--targets", type=int, default=1000)
    parser.add_argument("--runs", type=int, default=10)
    args = parser.parse_args()
    asyncio.run(measure(args.targets, args.runs))


if __name__ == "__main__":
    main()
