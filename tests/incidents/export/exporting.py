"""What the export tests share: a store holding one logged incident, an export read back
as text or lines, and the OCSF schema check of an exported line."""

from __future__ import annotations

import io
from functools import cache
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine

from agent.incidents.export import select, write
from agent.incidents.log import IncidentLog
from agent.incidents.model import IncidentFinding
from agent.incidents.queries import chain_entries


def with_incident(engine: Engine, finding: IncidentFinding) -> Engine:
    """`engine` with host-a's incident log holding `finding`, checkpointed as at a stop."""
    log = IncidentLog(engine, "host-a", "lab-ws-1", checkpoint_every=10)
    log.start()
    log.record(finding)
    log.checkpoint("stop")
    return engine


def export_text(engine: Engine, fmt: str, **filters: object) -> str:
    buf = io.StringIO(newline="")
    write(select(chain_entries(engine), **filters), fmt, buf)  # type: ignore[arg-type]
    return buf.getvalue()


def export_lines(text: str) -> list[str]:
    return [ln for ln in text.split("\n") if ln]


def exported(engine: Engine, fmt: str) -> list[str]:
    """The export's lines (a CSV line's \\r\\n ending split off too)."""
    return [ln for ln in export_text(engine, fmt).splitlines() if ln]


@cache
def _ocsf_schema() -> Any:
    ocsf_json_schema = pytest.importorskip("ocsf_json_schema")
    from agent.incidents.export.ocsf import OCSF_VERSION

    data = Path(ocsf_json_schema.__file__).parent / "ocsf" / f"{OCSF_VERSION}.json"
    return ocsf_json_schema.OcsfJsonSchemaEmbedded(
        ocsf_json_schema.load_ocsf_schema_json(str(data))
    )


def ocsf_errors(doc: dict[str, Any]) -> list[str]:
    """What the OCSF schema of `doc`'s class finds wrong in it (the test is skipped when
    jsonschema or ocsf-json-schema is not installed)."""
    jsonschema = pytest.importorskip("jsonschema")
    schema = _ocsf_schema()
    name = schema.lookup_class_name_from_uid(doc["class_uid"])
    validator = jsonschema.Draft202012Validator(schema.get_class_schema(name, []))
    return [f"{list(e.absolute_path)}: {e.message}" for e in validator.iter_errors(doc)]
