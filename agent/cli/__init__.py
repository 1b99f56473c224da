"""The `egress-agent` command line: each verb a thin call into the package.

Verbs live in one module per area (`agent/cli/<area>.py`) and are listed in `_VERBS`.
Errors a user can fix print one line and exit non-zero (2 for usage and config, 1 for
a failed check), never a traceback.
"""

from __future__ import annotations

import importlib
import sys

import click

from agent import __version__
from agent.cli._common import run_cli

# module:attribute of each click command or group added to the main group
_VERBS = [
    "agent.cli.core:run_cmd",
    "agent.cli.core:db",
    "agent.cli.core:status",
    "agent.cli.core:events",
    "agent.cli.core:config",
    "agent.cli.replay:replay",
    "agent.cli.policy:policy",
    "agent.cli.incidents:incidents",
    "agent.cli.keys:keys",
    "agent.cli.scan:scan",
]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="egress-agent")
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False),
    envvar="EGRESS_AGENT_CONFIG",
    help="YAML config file (default /etc/egress-agent/agent.yaml when it exists).",
)
@click.option("--log-format", type=click.Choice(["text", "json"]), default=None)
@click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"]), default=None)
@click.pass_context
def cli(
    ctx: click.Context, config_path: str | None, log_format: str | None, log_level: str | None
) -> None:
    """Watch controlled technology leave this host: files, network, policy, incidents."""
    ctx.ensure_object(dict)
    ctx.obj["config_path"] = config_path
    ctx.obj["log_format"] = log_format
    ctx.obj["log_level"] = log_level


for _target in _VERBS:
    _mod, _, _attr = _target.partition(":")
    cli.add_command(getattr(importlib.import_module(_mod), _attr))


def main() -> None:
    sys.exit(run_cli(cli))
