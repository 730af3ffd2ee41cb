"""``outagewatch demo``: the daemon against simulated services, in about half a minute."""

from outagewatch.demo.scenario import run_demo

__all__ = ["run_demo"]
