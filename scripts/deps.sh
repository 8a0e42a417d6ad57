#!/usr/bin/env bash
# Installs the system packages the network-namespace tests and the lab use,
# only when something is missing (idempotent). Debian/Ubuntu.
set -euo pipefail
need=()
command -v ip >/dev/null || need+=(iproute2)
command -v ping >/dev/null || need+=(iputils-ping)
command -v iperf3 >/dev/null || need+=(iperf3)
command -v wg >/dev/null || need+=(wireguard-tools)
command -v wireguard-go >/dev/null || need+=(wireguard-go) # TestDeviceExport: a stock device (wg-quick's userspace fallback)
command -v nft >/dev/null || need+=(nftables)
command -v sysctl >/dev/null || need+=(procps)
command -v conntrack >/dev/null || need+=(conntrack)
command -v turnserver >/dev/null || need+=(coturn) # TestRelayExternalCoturn; its service stays disabled
command -v git >/dev/null || need+=(git)           # TestRollingUpgrade builds an earlier commit from git
command -v chromium >/dev/null || need+=(chromium) # TestDashboard drives the dashboard in headless Chromium
if [ ${#need[@]} -gt 0 ]; then
	if [ "$(id -u)" != 0 ]; then
		echo "missing packages: ${need[*]} (run as root to install them)" >&2
		exit 1
	fi
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -qq
	apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
