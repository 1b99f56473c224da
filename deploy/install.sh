#!/usr/bin/env bash
# Install egress-agent on this host (or into a staging root) as a systemd service.
#
#   sudo deploy/install.sh                  install, create the user, upgrade the database
#   sudo deploy/install.sh --with-fanotify  also grant CAP_SYS_ADMIN for fanotify attribution
#   deploy/install.sh --root /tmp/stage     everything under /tmp/stage, touching nothing else
#
# What goes where (paths relative to --root, default /):
#   <prefix>/app                  an immutable copy of the source tree (agent/, migrations/,
#                                 policies/ — the shipped packs — and docs/)
#   <prefix>/venv                 a virtualenv with the app installed in it (pip, editable
#                                 install of <prefix>/app, so migrations/ and policies/ are
#                                 found beside the package), bytecode precompiled
#   /usr/local/bin/egress-agent   symlink to the venv's command
#   /etc/systemd/system/egress-agent.service (+ .service.d/fanotify.conf with --with-fanotify)
#   /etc/sysusers.d/egress-agent.conf, /etc/tmpfiles.d/egress-agent.conf,
#   /etc/sysctl.d/90-egress-agent.conf
#   /etc/egress-agent/agent.yaml  example config, only if none exists (else agent.yaml.dist)
#   /etc/egress-agent/policies.d  site policy packs
# Then: the user (systemd-sysusers), the directories (systemd-tmpfiles), the inotify
# limits (sysctl), `egress-agent db upgrade` as the service user, systemctl daemon-reload.
# With --root the same steps run against the staging root (sysusers and tmpfiles support
# --root; sysctl and systemctl are skipped) and the database is created under it.
#
# Options:
#   --root DIR        install under DIR instead of / (DESTDIR is honoured too)
#   --prefix DIR      where the app and venv go (default /opt/egress-agent)
#   --python PY       interpreter for the venv (default python3; needs 3.11+)
#   --pip-args ARGS   extra pip arguments, e.g. "--no-index --find-links /srv/wheels"
#   --with-fanotify   install the fanotify drop-in (CAP_SYS_ADMIN; see docs/operations.md)
#   --no-db-upgrade   skip `egress-agent db upgrade`
#   --no-sysctl       install the sysctl.d file but do not apply it now (it applies at boot)
#   --no-enable       do not `systemctl enable` the unit (it is never started by this script)
set -euo pipefail

SRC="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
ROOT="${DESTDIR:-}"
PREFIX=/opt/egress-agent
PYTHON=python3
PIP_ARGS=""
FANOTIFY=0
DB_UPGRADE=1
SYSCTL=1
ENABLE=1
USER_NAME=egress-agent

die() { echo "install: $*" >&2; exit 1; }
say() { echo "install: $*"; }

while [ $# -gt 0 ]; do
  case "$1" in
    --root) ROOT="${2:?--root needs a directory}"; shift 2 ;;
    --prefix) PREFIX="${2:?--prefix needs a directory}"; shift 2 ;;
    --python) PYTHON="${2:?--python needs an interpreter}"; shift 2 ;;
    --pip-args) PIP_ARGS="${2-}"; shift 2 ;;
    --with-fanotify) FANOTIFY=1; shift ;;
    --no-db-upgrade) DB_UPGRADE=0; shift ;;
    --no-sysctl) SYSCTL=0; shift ;;
    --no-enable) ENABLE=0; shift ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown option $1 (see --help)" ;;
  esac
done

case "$PREFIX" in /*) ;; *) die "--prefix must be an absolute path, got $PREFIX" ;; esac
ROOT="${ROOT%/}"
if [ -n "$ROOT" ]; then
  mkdir -p "$ROOT"
  ROOT="$(cd "$ROOT" && pwd)"
  if [ "$ROOT" = "/" ]; then ROOT=""; fi
fi
LIVE=0  # installing onto the running system (not a staging root)
if [ -z "$ROOT" ]; then LIVE=1; fi
if [ "$LIVE" = 1 ] && [ "$(id -u)" -ne 0 ]; then
  die "installing onto this system needs root (or use --root DIR to stage)"
fi
"$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
  || die "$PYTHON is older than Python 3.11"
for d in agent migrations policies pyproject.toml deploy/egress-agent.service; do
  [ -e "$SRC/$d" ] || die "$SRC does not look like an egress-agent source tree (no $d)"
done

APP="$ROOT$PREFIX/app"
VENV="$ROOT$PREFIX/venv"
ETC="$ROOT/etc"

# --- systemd and kernel settings ----------------------------------------------------
say "installing the unit, sysusers.d, tmpfiles.d and sysctl.d files under $ETC"
install -d "$ETC/systemd/system" "$ETC/sysusers.d" "$ETC/tmpfiles.d" "$ETC/sysctl.d"
sed "s#/opt/egress-agent#$PREFIX#g" "$SRC/deploy/egress-agent.service" \
  > "$ETC/systemd/system/egress-agent.service"
chmod 0644 "$ETC/systemd/system/egress-agent.service"
DROPIN="$ETC/systemd/system/egress-agent.service.d"
if [ "$FANOTIFY" = 1 ]; then
  install -D -m 0644 "$SRC/deploy/egress-agent.service.d/fanotify.conf" "$DROPIN/fanotify.conf"
else
  rm -f "$DROPIN/fanotify.conf"
  rmdir "$DROPIN" 2>/dev/null || true
fi
install -m 0644 "$SRC/deploy/sysusers.d/egress-agent.conf" "$ETC/sysusers.d/egress-agent.conf"
install -m 0644 "$SRC/deploy/tmpfiles.d/egress-agent.conf" "$ETC/tmpfiles.d/egress-agent.conf"
install -m 0644 "$SRC/deploy/sysctl.d/90-egress-agent.conf" "$ETC/sysctl.d/90-egress-agent.conf"

# --- the user (first: it must be able to run the venv's interpreter) ---------------
if command -v systemd-sysusers >/dev/null; then
  if [ "$LIVE" = 1 ]; then
    systemd-sysusers "$ETC/sysusers.d/egress-agent.conf"
  else
    systemd-sysusers --root="$ROOT" "$ETC/sysusers.d/egress-agent.conf"
  fi
elif [ "$LIVE" = 1 ] && ! id "$USER_NAME" >/dev/null 2>&1; then
  useradd --system --home-dir /var/lib/egress-agent --no-create-home \
    --shell /usr/sbin/nologin --user-group "$USER_NAME"
fi

# --- the code: a fresh copy of the tree, swapped in whole ---------------------------
say "copying the source tree to $APP"
mkdir -p "$ROOT$PREFIX"
rm -rf "$APP.new"
mkdir -p "$APP.new"
for item in agent migrations policies docs deploy pyproject.toml README.md LICENSE; do
  if [ -e "$SRC/$item" ]; then cp -a "$SRC/$item" "$APP.new/"; fi
done
find "$APP.new" \( -name __pycache__ -o -name '*.pyc' -o -name '.*_cache' \) -prune \
  -exec rm -rf {} +
rm -rf "$APP.old"
if [ -d "$APP" ]; then mv "$APP" "$APP.old"; fi
mv "$APP.new" "$APP"
rm -rf "$APP.old"

say "creating the virtualenv $VENV"
have_py="$(readlink -f "$VENV/bin/python" 2>/dev/null || true)"
# the interpreter itself, not the name it is called by: a pyenv shim is a script, and
# comparing the venv's python with it rebuilt the venv on every upgrade
want_py="$("$PYTHON" -c 'import os, sys; print(os.path.realpath(sys.executable))')"
if [ "$have_py" != "$want_py" ]; then "$PYTHON" -m venv --clear "$VENV"; fi
# the service runs this interpreter as its own user: one under /root (pyenv, conda) is
# unreadable to it, which would otherwise only show when the unit starts
if [ "$LIVE" = 1 ] && ! runuser -u "$USER_NAME" -- "$VENV/bin/python" -c '' 2>/dev/null; then
  die "the $USER_NAME user cannot run $VENV/bin/python (from $PYTHON; is it under /root?). Re-run with --python /usr/bin/python3"
fi
# shellcheck disable=SC2086  # PIP_ARGS is a list of words on purpose
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check $PIP_ARGS -e "$APP"
# the unit's ProtectSystem=strict makes /opt read-only: compile now, not at first import
"$VENV/bin/python" -m compileall -q "$APP/agent" "$APP/migrations" >/dev/null
chmod -R go-w "$ROOT$PREFIX"

mkdir -p "$ROOT/usr/local/bin"
ln -sfn "$PREFIX/venv/bin/egress-agent" "$ROOT/usr/local/bin/egress-agent"

# --- config, site policy directory and state directories (never overwrite edits) ------
install -d -m 0755 "$ETC/egress-agent" "$ETC/egress-agent/policies.d"
if [ -e "$ETC/egress-agent/agent.yaml" ]; then
  if ! cmp -s "$SRC/deploy/agent.yaml" "$ETC/egress-agent/agent.yaml"; then
    install -m 0640 "$SRC/deploy/agent.yaml" "$ETC/egress-agent/agent.yaml.dist"
    say "kept your $ETC/egress-agent/agent.yaml; the shipped example is agent.yaml.dist"
  fi
else
  install -m 0640 "$SRC/deploy/agent.yaml" "$ETC/egress-agent/agent.yaml"
fi

if command -v systemd-tmpfiles >/dev/null; then
  if [ "$LIVE" = 1 ]; then
    systemd-tmpfiles --create "$ETC/tmpfiles.d/egress-agent.conf"
  else
    systemd-tmpfiles --create --root="$ROOT" "$ETC/tmpfiles.d/egress-agent.conf"
  fi
else
  install -d -m 0750 "$ROOT/var/lib/egress-agent" "$ROOT/var/log/egress-agent" \
    "$ROOT/var/log/egress-agent/incidents"
fi
# a store left by an earlier run as root would be unwritable to the agent: hand it over,
# as systemd's StateDirectory= does when the unit starts
if [ "$LIVE" = 1 ]; then
  chown -R "$USER_NAME:$USER_NAME" /var/lib/egress-agent /var/log/egress-agent
fi
# the config holds password hashes and database URLs: readable by root and the agent only
if [ "$LIVE" = 1 ]; then
  chgrp "$USER_NAME" "$ETC/egress-agent/agent.yaml"
elif grep -q "^$USER_NAME:" "$ETC/group" 2>/dev/null; then
  gid="$(awk -F: -v u="$USER_NAME" '$1 == u {print $3}' "$ETC/group")"
  chgrp "$gid" "$ETC/egress-agent/agent.yaml" 2>/dev/null || true
fi

# --- the database --------------------------------------------------------------------
if [ "$DB_UPGRADE" = 1 ]; then
  say "upgrading the database"
  if [ "$LIVE" = 1 ]; then
    runuser -u "$USER_NAME" -- env XDG_STATE_HOME=/var/lib \
      "$PREFIX/venv/bin/egress-agent" --config /etc/egress-agent/agent.yaml db upgrade
  else
    # the staged config points at /var/lib/egress-agent; keep the store inside the root
    EGRESS_AGENT_AGENT__STATE_DIR="$ROOT/var/lib/egress-agent" \
      "$VENV/bin/egress-agent" --config "$ETC/egress-agent/agent.yaml" db upgrade
    owner="$(awk -F: -v u="$USER_NAME" '$1 == u {print $3 ":" $4}' "$ETC/passwd" 2>/dev/null)"
    if [ -n "$owner" ] && [ "$(id -u)" -eq 0 ]; then
      chown -R "$owner" "$ROOT/var/lib/egress-agent"
    fi
  fi
fi

# --- kernel limits and systemd -------------------------------------------------------
if [ "$LIVE" = 1 ]; then
  if [ "$SYSCTL" = 1 ]; then
    sysctl -q -p "$ETC/sysctl.d/90-egress-agent.conf" \
      || say "could not apply inotify limits now (they apply at boot)"
  fi
  if [ -d /run/systemd/system ]; then
    systemctl daemon-reload
    if [ "$ENABLE" = 1 ]; then systemctl enable egress-agent.service; fi
    say "done. Edit /etc/egress-agent/agent.yaml, then: systemctl start egress-agent"
  else
    say "done. systemd is not running here: start the agent with $PREFIX/venv/bin/egress-agent run"
  fi
else
  say "done: staged under $ROOT"
fi
