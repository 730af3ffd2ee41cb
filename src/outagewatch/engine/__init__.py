"""The shell around the pure core: runs it on every report from the scheduler and every
timer, and writes what it decided.

- ``engine.py``: samples to verdicts, handed to the desk (or published as a cluster view);
- ``desk.py``: outages to incident books, their mails and the UPDATE cadence;
- ``maintenance.py``: maintenance windows, their mails and holds;
- ``compose.py``: notifications rendered and addressed, per channel;
- ``timers.py``: one timer per target, platform and window;
- ``writer.py``: the changes written behind, one transaction per batch.
"""

from outagewatch.engine.compose import Composer
from outagewatch.engine.desk import Desk
from outagewatch.engine.engine import Engine
from outagewatch.engine.maintenance import Maintenance
from outagewatch.engine.timers import TimerKind, Timers
from outagewatch.engine.writer import Writer

__all__ = ["Composer", "Desk", "Engine", "Maintenance", "TimerKind", "Timers", "Writer"]
