"""Incidents: correlation of file and network events into stories, a tamper-evident
incident log (hash chain), its lifecycle, and exports for SIEM, legal and auditors.

Data walks one way: the pipeline's judged events reach the `Correlator` (a sink beside
the store writer), whose pure `CorrelationEngine` emits `Finding`s that the
`IncidentLog` writes with their chain records; the CLI and the export job only read.
"""

from agent.incidents.chain import ChainEntry, VerifyReport, verify_entries
from agent.incidents.correlate import CorrelationEngine
from agent.incidents.log import IncidentError, IncidentLog, set_status
from agent.incidents.model import Finding
from agent.incidents.service import Correlator

__all__ = [
    "ChainEntry",
    "CorrelationEngine",
    "Correlator",
    "Finding",
    "IncidentError",
    "IncidentLog",
    "VerifyReport",
    "set_status",
    "verify_entries",
]
