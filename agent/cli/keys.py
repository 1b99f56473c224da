"""`egress-agent keys show`: the host's public signing key, for an auditor to pin.

The key (Ed25519, generated once in the state directory, mode 0600) signs the trailer
of every incident export and the chain-head anchor file; see agent/incidents/anchor.py.
"""

from __future__ import annotations

import click

from agent.cli._common import UserError, print_json, settings_from


@click.group()
def keys() -> None:
    """The host key that signs incident exports and the chain-head anchor."""


@keys.command("show")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def show(ctx: click.Context, as_json: bool) -> None:
    """Print the public key (created on first use) and its key id."""
    from agent.incidents.anchor import (
        KEY_FILE,
        AnchorError,
        key_id,
        load_or_create_key,
        public_text,
    )

    state_dir = settings_from(ctx).state_dir
    try:
        key = load_or_create_key(state_dir).public_key()
    except AnchorError as e:
        raise UserError(str(e)) from None
    doc = {"public_key": public_text(key), "key_id": key_id(key), "file": str(state_dir / KEY_FILE)}
    if as_json:
        print_json(doc)
    else:
        click.echo(f"{doc['public_key']}\nkey id {doc['key_id']}  ({doc['file']})")
