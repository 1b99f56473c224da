"""`agent/store/` owns the SQL: no module outside it builds a statement.

Outside the store package a module may name an `Engine` or `Connection` (to pass one
on) and catch SQLAlchemy's errors; even a read session is opened by the store;
select/insert/update/delete, `text()` and raw driver SQL belong behind a narrow function
in agent/store, so a schema change touches one package (issue #19).
"""

from __future__ import annotations

import ast
from pathlib import Path

AGENT = Path(__file__).resolve().parents[2] / "agent"
ALLOWED = {
    "sqlalchemy": {"Engine", "Connection"},
    "sqlalchemy.engine": {"make_url", "Engine", "Connection"},
}


def _violations(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    found: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("sqlalchemy"):
            module = node.module or ""
            if module == "sqlalchemy.exc":
                continue
            for alias in node.names:
                if alias.name not in ALLOWED.get(module, set()):
                    found.append(f"{path}:{node.lineno}: from {module} import {alias.name}")
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("sqlalchemy"):
                    found.append(f"{path}:{node.lineno}: import {alias.name}")
        elif isinstance(node, ast.Attribute) and node.attr == "exec_driver_sql":
            found.append(f"{path}:{node.lineno}: exec_driver_sql")
    return found


def test_no_statement_is_built_outside_the_store() -> None:
    outside = [p for p in AGENT.rglob("*.py") if "store" not in p.relative_to(AGENT).parts[:1]]
    assert len(outside) > 50  # the walk found the package
    problems = [v for p in sorted(outside) for v in _violations(p)]
    assert problems == []


def test_the_check_sees_a_statement(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text(
        "from sqlalchemy import Engine, select\nimport sqlalchemy\n"
        "from sqlalchemy.orm import Session\n"
        "def f(c):\n    c.exec_driver_sql('PRAGMA optimize')\n"
    )
    assert [v.split(": ", 1)[1] for v in _violations(bad)] == [
        "from sqlalchemy import select",
        "import sqlalchemy",
        "from sqlalchemy.orm import Session",
        "exec_driver_sql",
    ]
