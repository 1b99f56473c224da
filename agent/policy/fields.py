"""The field registry: every fact a rule condition may test, and the operators per type.

The vocabulary packs are written in, apart from the compiler (`conditions`) that checks
each comparison against it and from `facts`, which builds the values under these names:
both read this one list. Moved out of `conditions.py` to keep that module to the
compiler and evaluator (style guide: modules under ~400 lines).
"""

from __future__ import annotations

from collections.abc import Callable

# field name -> type: "str", "num", "set" (a set of strings), "bool" (eq/ne true|false), "any"
FIELDS: dict[str, str] = {
    # file | flow | transfer (a file joined to the flow that carried it) | tree (a
    # whole-tree copy: incidents/tree.py)
    "event": "str",
    "action": "str",  # file action: created, written, moved, ...
    "channel": "str",  # local | removable | network_share | cloud_sync | network
    "path": "str",
    "size": "num",
    "files_count": "num",  # files of a whole-tree copy (event: tree)
    "kinds": "set",  # artefact kinds
    # category codes present: distinct terms >= min_count and confidence >= min_confidence;
    # per category also `matches.CODE` (occurrences) and `confidence.CODE` (low|medium|high)
    "categories": "set",
    "skipped": "str",  # why classification was cut short (deferred, busy, member_limit, ...)
    "process.exe": "str",
    "process.name": "str",
    "user": "str",
    "hour": "num",  # 0-23, host local time
    "weekday": "str",  # mon .. sun
    "dest_class": "str",  # loopback | internal | approved | domestic | foreign | unknown
    "country": "str",
    # known service of the destination name (agent/data/services.yaml, network.services_file)
    "service": "str",  # e.g. "Google Drive", "GitHub", "ChatGPT", "Hugging Face"
    # cloud_storage | code_hosting | webmail | file_transfer | ai_assistant | messaging
    "service_category": "str",
    "dest_org": "str",  # owner of the address from network.asn_db, e.g. "AMAZON-02"
    "bytes_out": "num",
    "name": "str",  # destination name (SNI, HTTP Host or DNS)
    "sni": "str",
    "dst_ip": "str",
    "dst_port": "num",
    "protocol": "str",
}

# tag details the classifier promises (agent/categories.py), as `<kind>.<detail>` fields
DETAILS: dict[str, dict[str, str]] = {
    "model_weights": {"format": "str", "parameters": "num", "tensors": "num", "dtype": "str"},
    "dataset": {"format": "str", "columns": "any", "rows": "num"},
    "source_code": {"language": "str", "git_remote": "str", "git_commit": "str"},
    "archive": {"format": "str", "members": "num", "nested_kinds": "any"},
    "document": {"format": "str", "chars": "num"},
    "engineering": {"format": "str"},
    "secret": {"type": "str"},
    # a git repository (agent/classify/repository.py): on a flow of git, the one it pushed
    # or fetched; on a file under .git/, the one it belongs to
    "repository": {
        "name": "str",
        "root": "str",
        "remote": "str",
        "remote_host": "str",
        "push_url": "str",
        "push_host": "str",
        "direction": "str",  # push | fetch
        "approved": "bool",  # push URL or destination in network.approved_git_remotes
        "branch": "str",
        "commit": "str",
        "files_count": "num",
        "languages": "any",
        "size": "num",
        "bare": "bool",
    },
}

# operator -> (field types it applies to, value shape: scalar | list | number | bool | regex)
OPERATORS: dict[str, tuple[tuple[str, ...], str]] = {
    "eq": (("str", "num", "any", "bool"), "scalar"),
    "ne": (("str", "num", "any", "bool"), "scalar"),
    "in": (("str", "num", "any"), "list"),
    "not_in": (("str", "num", "any"), "list"),
    "gt": (("num", "any"), "number"),
    "ge": (("num", "any"), "number"),
    "lt": (("num", "any"), "number"),
    "le": (("num", "any"), "number"),
    "contains": (("set", "any"), "scalar"),
    "contains_any": (("set", "any"), "list"),
    "contains_all": (("set", "any"), "list"),
    "glob": (("str",), "list"),
    "regex": (("str",), "regex"),
    "cidr": (("str",), "cidr"),
    "exists": (("str", "num", "set", "any", "bool"), "bool"),
}


def field_type(name: str, known_category: Callable[[str], bool]) -> str | None:
    """The type of a field name, or None if no such field exists."""
    if name in FIELDS:
        return FIELDS[name]
    head, dot, tail = name.partition(".")
    if not dot:
        return None
    if head == "matches":
        return "num" if known_category(tail) else None
    if head == "confidence":  # low | medium | high (agent/classify/keywords.py)
        return "str" if known_category(tail) else None
    return DETAILS.get(head, {}).get(tail)
