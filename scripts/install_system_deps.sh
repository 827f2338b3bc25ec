#!/usr/bin/env bash
# Installs the OS tools meshward's data path, its build and its tests use, where missing
# (Debian/Ubuntu).
set -euo pipefail
need=()
command -v iptables-restore >/dev/null || need+=(iptables)
command -v ip >/dev/null || need+=(iproute2)
command -v nginx >/dev/null || need+=(nginx-light)
command -v curl >/dev/null || need+=(curl)
command -v tcpdump >/dev/null || need+=(tcpdump)
command -v wrk >/dev/null || need+=(wrk)
command -v openssl >/dev/null || need+=(openssl)
command -v ps >/dev/null || need+=(procps)
command -v setpriv >/dev/null || need+=(util-linux)
# A C compiler and the headers of the venv's Python: make install compiles the sidecar's hot path.
command -v gcc >/dev/null || need+=(gcc)
if [ -x /usr/bin/python3.11 ] && [ ! -e /usr/include/python3.11/Python.h ]; then
  need+=(python3.11-dev)
fi
if [ ${#need[@]} -eq 0 ]; then exit 0; fi
if [ "$(id -u)" -ne 0 ]; then
  echo "meshward: missing system tools (${need[*]}); run as root or install them: apt-get install ${need[*]}" >&2
  exit 1
fi
echo "meshward: installing ${need[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
