#!/usr/bin/env bash
# Debian packages the agent and its tests use: libpcap (the capture filter's BPF compiler), tcpdump
# and tshark (benchmark references), prometheus-node-exporter (the idle benchmark's
# reference daemon; the bench starts its own copy on a free port), iperf3, openssl,
# Prometheus with promtool, systemd
# tools (systemd-analyze verify), iproute2 (network namespaces for tests), nftables
# (turns conntrack on in a test namespace for the network sensor's UDP accounting),
# openssh-server (a `git push` over ssh to a peer namespace, tests/e2e/test_git_push_ssh.py).
# Runs only as root; without root it prints what is missing and carries on.
set -euo pipefail
PKGS=(libpcap0.8 tcpdump tshark prometheus-node-exporter iperf3 openssl prometheus systemd iproute2 git nftables openssh-server)
missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then exit 0; fi
if [ "$(id -u)" -ne 0 ]; then
  echo "system-deps: not root; missing Debian packages (tests needing them skip): ${missing[*]}" >&2
  exit 0
fi
export DEBIAN_FRONTEND=noninteractive
echo "wireshark-common wireshark-common/install-setuid boolean false" | debconf-set-selections || true
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
