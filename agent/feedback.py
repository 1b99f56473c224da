"""The pipeline's one deliberate feedback edge: incidents ask the file sensor for reads.

Data walks one way (sensor → classify → policy → store → incidents), except here: when
correlation sees a tagged artefact written, copied or moved, it asks the file sensor to
report opens of that path as `read` events (a fanotify inode mark). Those reads are what
link a file to the process that uploads it. The edge is a `ReadWatch`: the correlator
holds it from its start, and the file sensor attaches itself when (and if) it starts —
the sensors start after the sinks, a sensor may be off or restarted, so asking before a
sensor is attached is not an error, only nothing to do yet.

Two hold times must agree for the edge to work, so both live here:

- `READ_HOLD`: the file sensor holds each event this long so fanotify's pid of the
  writer (or reader) can be joined to it (agent/sensors/files/sensor.py);
- `FLOW_HOLD`: the correlator holds each flow this long before matching it, because the
  read that preceded an upload reaches correlation later than the flow can: it waits
  `READ_HOLD` in the sensor, then passes the classify and policy stages. An incident
  opened without the upload's read names the wrong file until it is refined.

`FLOW_HOLD` must stay well above `READ_HOLD` plus the queues' lingers on the read's way
(tests/test_feedback.py states the relation with the real constants).
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Callable

log = logging.getLogger(__name__)

READ_HOLD = 0.15  # seconds the file sensor holds events for fanotify's pid
FLOW_HOLD = 1.0  # seconds the correlator holds a flow for the reads that preceded it
MAX_ASKED = 65_536  # paths remembered as asked for, so each is asked once

# what the file sensor offers: mark `path` for reads; True when the kernel mark was set
MarkReads = Callable[[str], bool]


class ReadWatch:
    """Incidents → file sensor: "report reads of this tagged path".

    One thread asks (the correlator's); `attach` is called from the daemon's thread when
    the file sensor is created, again after a sensor restart (the new sensor replaces
    the old one). A path is asked once: the sensor keeps its mark across renames.
    """

    def __init__(self) -> None:
        self._mark: MarkReads | None = None
        self._asked: OrderedDict[str, None] = OrderedDict()

    def attach(self, mark: MarkReads) -> None:
        """Route requests to `mark` (the running file sensor's `watch_reads`)."""
        self._mark = mark

    @property
    def attached(self) -> bool:
        return self._mark is not None

    def ask(self, path: str) -> None:
        """Ask the attached sensor to report reads of `path`; nothing when none is.

        A path asked while no sensor was attached is asked again next time; one the
        sensor could not mark (no fanotify, too many paths) is not asked again. A failing
        sensor is logged at debug level: this edge must never stop correlation.
        """
        mark = self._mark
        if mark is None or path in self._asked:
            return
        try:
            mark(path)
        except Exception:
            log.debug("watch_reads(%s) failed", path, exc_info=True)
            return
        self._asked[path] = None
        while len(self._asked) > MAX_ASKED:
            self._asked.popitem(last=False)
