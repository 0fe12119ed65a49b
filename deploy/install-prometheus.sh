#!/usr/bin/env bash
# Install Prometheus (the Debian package) for tests/test_prometheus.py when it is missing.
# Needs root and apt-get; otherwise says what to do and exits 0 (the test then fails with the same advice).
set -euo pipefail
if command -v prometheus >/dev/null 2>&1; then
  exit 0
fi
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
  echo "note: prometheus is not installed and this is not root with apt-get; tests/test_prometheus.py" \
       "will fail until it is (apt-get install prometheus)" >&2
  exit 0
fi
echo "installing prometheus (Debian package) for tests/test_prometheus.py" >&2
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends prometheus >/dev/null
# The package's service would listen on all interfaces; the tests start their own on loopback.
if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet prometheus 2>/dev/null; then
  systemctl disable --now prometheus >/dev/null 2>&1 || true
fi
