"""egress-agent: watch controlled technology leave R&D hosts.

Sensors (files, network) emit typed events; the classifier tags artefacts; policy
packs decide; the store keeps every event; incidents and metrics tell people.
"""

__version__ = "0.1.0"
