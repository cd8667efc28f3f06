#!/usr/bin/env bash
# The agent converging a node with 1,000 WireGuard peers (and 20 members) in a fresh
# namespace: from nothing, then again in sync. Prints wall time, operations, netlink
# writes and peak memory of the agent, and the memory of the userspace WireGuard device.
# Needs root. No packet leaves the namespaces (peers' endpoints are never contacted:
# nothing is sent through the tunnel).
#   bash bench/agent.sh [target/release/wireway-agent]
set -euo pipefail
agent=${1:-target/release/wireway-agent}
tag=wwag$$
dir=$(mktemp -d)
cleanup() {
    pkill -f "$dir" 2>/dev/null || true
    for ns in $(ip netns list | awk '{print $1}' | grep "^$tag" || true); do ip netns del "$ns"; done
    rm -rf "$dir"
}
trap cleanup EXIT

ip netns add "$tag-node"
for i in $(seq 0 19); do ip netns add "$tag-pod$i"; done
python3 - "$tag" > "$dir/state.json" <<'PY'
import base64, json, os, sys
tag = sys.argv[1]
key = lambda: base64.b64encode(os.urandom(32)).decode()
peers = [{"name": f"node-{i}", "publicKey": key(), "endpoint": f"127.0.0.1:{20000 + i}",
          "allowedIps": [f"10.{100 + i // 256}.{i % 256}.0/24"]} for i in range(1000)]
members = [{"id": f"red/pod-{i}", "netns": {"locator": {"path": f"/run/netns/{tag}-pod{i}"}},
            "interfaceName": "nsm-red", "hostInterfaceName": f"wwv{i:08x}", "address": f"10.99.0.{i + 1}"} for i in range(20)]
print(json.dumps({"node": "node", "version": 1, "services": [{
    "name": "red/red", "interfaceName": "ww-red", "listenPort": 51820, "mtu": 1420, "cidr": "10.0.0.0/8",
    "nodePrefix": "10.99.0.0/24", "routeTable": 0x57570000 + 51820, "members": members, "peers": peers}]}))
PY
run() {
    /usr/bin/time -f "%e s wall, peak RSS %M KiB" ip netns exec "$tag-node" "$agent" --state-dir "$dir/state" apply --node-state "$dir/state.json" 2>&1 | tail -2 | paste -sd ' '
}
echo "from nothing: $(run)"
echo "in sync:      $(run)"
pid=$(pgrep -f "$dir/state/wireguard/ww-red.sock" | head -1)
echo "userspace device with 1000 peers: RSS $(awk '/VmRSS/ {print $2, $3}' "/proc/$pid/status")"
