#!/usr/bin/env bash
# Remove what deploy/install.sh installed.
#
#   sudo deploy/uninstall.sh           stop and remove the service and the code; keep the
#                                      config, the store and the exports (evidence)
#   sudo deploy/uninstall.sh --purge   also delete /etc/egress-agent, /var/lib/egress-agent,
#                                      /var/log/egress-agent and the egress-agent user
#   deploy/uninstall.sh --root DIR     the same inside a staging root
#
# Options: --root DIR (or DESTDIR), --prefix DIR (default /opt/egress-agent), --purge.
set -euo pipefail

ROOT="${DESTDIR:-}"
PREFIX=/opt/egress-agent
PURGE=0
USER_NAME=egress-agent

die() { echo "uninstall: $*" >&2; exit 1; }
say() { echo "uninstall: $*"; }

while [ $# -gt 0 ]; do
  case "$1" in
    --root) ROOT="${2:?--root needs a directory}"; shift 2 ;;
    --prefix) PREFIX="${2:?--prefix needs a directory}"; shift 2 ;;
    --purge) PURGE=1; shift ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown option $1 (see --help)" ;;
  esac
done
case "$PREFIX" in /?*) ;; *) die "--prefix must be an absolute path other than /" ;; esac
ROOT="${ROOT%/}"
LIVE=0
if [ -z "$ROOT" ]; then LIVE=1; fi
if [ "$LIVE" = 1 ] && [ "$(id -u)" -ne 0 ]; then
  die "uninstalling from this system needs root (or use --root DIR)"
fi
if [ "$LIVE" = 0 ] && [ ! -d "$ROOT" ]; then die "no such staging root: $ROOT"; fi

if [ "$LIVE" = 1 ] && [ -d /run/systemd/system ]; then
  systemctl disable --now egress-agent.service 2>/dev/null || true
fi

ETC="$ROOT/etc"
say "removing the service, its system files and $ROOT$PREFIX"
rm -f "$ETC/systemd/system/egress-agent.service" \
  "$ETC/systemd/system/egress-agent.service.d/fanotify.conf" \
  "$ETC/sysusers.d/egress-agent.conf" \
  "$ETC/tmpfiles.d/egress-agent.conf" \
  "$ETC/sysctl.d/90-egress-agent.conf"
rmdir "$ETC/systemd/system/egress-agent.service.d" 2>/dev/null || true
link="$ROOT/usr/local/bin/egress-agent"
if [ -L "$link" ] && [ "$(readlink "$link")" = "$PREFIX/venv/bin/egress-agent" ]; then
  rm -f "$link"
fi
rm -rf "$ROOT$PREFIX"

if [ "$PURGE" = 1 ]; then
  say "purging config, store, exports and the $USER_NAME user"
  rm -rf "$ETC/egress-agent" "$ROOT/var/lib/egress-agent" "$ROOT/var/log/egress-agent"
  if [ "$LIVE" = 1 ]; then
    if id "$USER_NAME" >/dev/null 2>&1; then userdel "$USER_NAME" || true; fi
  else
    for f in passwd group shadow gshadow; do
      if [ -f "$ETC/$f" ]; then sed -i "/^$USER_NAME:/d" "$ETC/$f"; fi
    done
  fi
else
  say "kept $ETC/egress-agent, $ROOT/var/lib/egress-agent and $ROOT/var/log/egress-agent (--purge removes them)"
fi

if [ "$LIVE" = 1 ] && [ -d /run/systemd/system ]; then
  systemctl daemon-reload
fi
say "done"
