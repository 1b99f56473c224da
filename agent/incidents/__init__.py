"""Incidents: correlation of file and network events into stories, a tamper-evident
incident log (hash chain), its lifecycle, and exports for SIEM, legal and auditors.

Data walks one way: the pipeline's judged events reach the `Correlator` (a sink beside
the store writer), whose pure `CorrelationCore` emits `IncidentFinding`s that the
`IncidentLog` writes with their chain records; the CLI and the export job only read.
"""

from typing import TYPE_CHECKING

from agent.lazy import lazy_attributes

if TYPE_CHECKING:
    from agent.incidents.chain import ChainEntry, VerifyReport, verify_entries
    from agent.incidents.correlate import CorrelationCore
    from agent.incidents.log import IncidentError, IncidentLog, set_status
    from agent.incidents.model import IncidentFinding
    from agent.incidents.service import Correlator

# loaded when first named: a CLI verb that reads one module of the package (`incidents
# verify` needs the chain, not the correlator, the config model and the pipeline) does
# not pay 0.4 s importing the rest
_LAZY = {
    "ChainEntry": "chain",
    "VerifyReport": "chain",
    "verify_entries": "chain",
    "CorrelationCore": "correlate",
    "IncidentError": "log",
    "IncidentLog": "log",
    "set_status": "log",
    "IncidentFinding": "model",
    "Correlator": "service",
}


__getattr__ = lazy_attributes(__name__, _LAZY)

__all__ = [
    "ChainEntry",
    "CorrelationCore",
    "Correlator",
    "IncidentError",
    "IncidentFinding",
    "IncidentLog",
    "VerifyReport",
    "set_status",
    "verify_entries",
]
