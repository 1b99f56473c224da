"""`make bench`: run every benchmark and write docs/benchmarks.md (markdown + JSON).

Each benchmark is a module `bench/<name>.py` runnable as `python -m bench.<name>` that
prints one JSON object on its last stdout line. Where it reports comparisons it uses
`{"comparisons": [{"what", "agent", "reference", "unit", "ratio", "goal", "met",
"note"}]}`; anything else it prints is kept verbatim in the JSON appendix. Every figure
comes from this run, on this machine, described at the top of the report.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
BENCHMARKS = [
    "idle",
    "file_burst",
    "network",
    "replay",
    "udp_flows",
    "hashing",
    "store",
    "fleet",
    "memory",
]


def machine() -> dict[str, Any]:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = 0
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                mem = int(line.split()[1]) // 1024
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_mib": mem,
        "kernel": platform.release(),
        "python": platform.python_version(),
    }


def run_one(name: str, timeout: float) -> dict[str, Any]:
    started = time.monotonic()
    try:
        res = subprocess.run(
            [sys.executable, "-m", f"bench.{name}"],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired:
        return {"name": name, "error": f"timed out after {timeout:.0f}s"}
    elapsed = time.monotonic() - started
    lines = [ln for ln in res.stdout.strip().splitlines() if ln.strip()]
    doc: dict[str, Any] = {"name": name, "seconds": round(elapsed, 1)}
    if res.returncode != 0 or not lines:
        doc["error"] = (res.stderr.strip().splitlines() or ["no output"])[-1][:500]
        return doc
    try:
        doc["result"] = json.loads(lines[-1])
    except ValueError:
        doc["error"] = f"last line is not JSON: {lines[-1][:200]}"
    return doc


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:,.3g}" if abs(v) < 1000 else f"{v:,.0f}"
    if isinstance(v, bool):
        return "yes" if v else "**no**"
    return "" if v is None else str(v)


def render(runs: list[dict[str, Any]], info: dict[str, Any]) -> str:
    out = [
        "# Benchmarks",
        "",
        f"Written {datetime.now(UTC).strftime('%Y-%m-%d %H:%M UTC')} by `make bench` "
        "(`python -m bench NAME...` re-runs some and keeps the others; each run's time is "
        "`ran_at` in the raw results) on: "
        f"{info['cpu']}, {info['cores']} cores, {info['memory_mib']} MiB, Linux {info['kernel']}, "
        f"Python {info['python']}. Every ratio compares the agent with a reference tool "
        "measured in the same run on the same work (lower is better for time and CPU).",
        "",
        "| benchmark | what | agent | reference | unit | ratio | goal | met | note |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in runs:
        comps = (
            (r.get("result") or {}).get("comparisons")
            if isinstance(r.get("result"), dict)
            else None
        )
        if r.get("error"):
            out.append(f"| {r['name']} | not run | | | | | | | {r['error']} |")
            continue
        if not comps:
            out.append(f"| {r['name']} | see JSON below | | | | | | | |")
            continue
        for c in comps:
            out.append(
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} |".format(
                    r["name"],
                    c.get("what", ""),
                    _fmt(c.get("agent")),
                    _fmt(c.get("reference")),
                    c.get("unit", ""),
                    _fmt(c.get("ratio")),
                    c.get("goal", ""),
                    _fmt(c.get("met")) if "met" in c else "",
                    str(c.get("note", "")).replace("|", "/"),
                )
            )
    out += [
        "",
        "## Raw results",
        "",
        "```json",
        json.dumps({"machine": info, "runs": runs}, indent=1, default=str),
        "```",
        "",
    ]
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("names", nargs="*", default=BENCHMARKS)
    ap.add_argument("--timeout", type=float, default=1800)
    ap.add_argument("--output", default=str(REPO / "docs" / "benchmarks.md"))
    args = ap.parse_args()
    info = machine()
    runs: list[dict[str, Any]] = []
    previous = Path(args.output).with_suffix(".json")
    if args.names != BENCHMARKS and previous.exists():
        # re-running some benchmarks keeps the others' last results (each says its time)
        kept = json.loads(previous.read_text()).get("runs", [])
        runs = [r for r in kept if r.get("name") not in args.names]
    for name in args.names:
        if not (REPO / "bench" / f"{name}.py").exists():
            runs.append({"name": name, "error": f"bench/{name}.py does not exist"})
            continue
        print(f"bench: {name} ...", file=sys.stderr, flush=True)
        result = run_one(name, args.timeout)
        result["ran_at"] = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
        runs.append(result)
    runs.sort(key=lambda r: BENCHMARKS.index(r["name"]) if r["name"] in BENCHMARKS else 99)
    Path(args.output).write_text(render(runs, info))
    (Path(args.output).with_suffix(".json")).write_text(
        json.dumps({"machine": info, "runs": runs}, indent=1, default=str)
    )
    print(f"wrote {args.output}", file=sys.stderr)


if __name__ == "__main__":
    main()
