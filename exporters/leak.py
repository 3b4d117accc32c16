"""The memory-leak detector, for the exporters' and the load generator's users.

The detector lives in server/leak.py, since the server runs it on itself and
server/ depends on nothing above it; this module keeps its public names here.
"""

from __future__ import annotations

from server.leak import LeakSettings, LeakVerdict, detect_leak, theil_sen, warm_up

__all__ = ["LeakSettings", "LeakVerdict", "detect_leak", "theil_sen", "warm_up"]
