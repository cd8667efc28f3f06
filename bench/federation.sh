#!/usr/bin/env bash
# From a member joining in one cluster to reachable from another: a lab of
# config/samples/multicluster (east, west behind NAT, partner), then N times a pod added
# to west's manifests, timed from the file written until east's red-e1 gets an answer
# from its address (west's supervisor makes the pod, west's operator plans and tells
# east's, east's operator plans, east's agent applies, west's agent applies, and the
# WireGuard handshake through the NAT completes). Prints p50, p99 and max. Needs root and
# the binaries (default target/release: make build).
#   bash bench/federation.sh [N] [target/release/wireway]
set -euo pipefail
runs=${1:-20}
wireway=${2:-target/release/wireway}
name=fedb$((RANDOM % 1000))
dir=$(mktemp -d)
cleanup() {
    "$wireway" lab --name "$name" --dir "$dir/lab" down >/dev/null 2>&1 || true
    rm -rf "$dir"
}
trap cleanup EXIT

cp -r config/samples/multicluster "$dir/clusters"
"$wireway" lab --name "$name" --dir "$dir/lab" up "$dir/clusters" >/dev/null 2>&1
east="$dir/lab/clusters/east"
west="$dir/lab/clusters/west"
from=$(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['pods']['red/red-e1']['netns'])" "$east/lab.json")

python3 - "$runs" "$west" "$dir/clusters/west" "$from" <<'EOF'
import json, statistics, subprocess, sys, time

runs, west, manifests, netns = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]

def address(pod):
    """The pod's address in red/red, as west's operator planned it."""
    try:
        state = json.load(open(f"{west}/operator/state.json"))
    except (OSError, ValueError):
        return None
    for member in state.get("endpoints", {}).get("red/red-members", {}).get("members", []):
        if member["workload"] == pod and member.get("admitted") and member.get("address"):
            return member["address"]
    return None

def answers(addr):
    return subprocess.run(
        ["ip", "netns", "exec", netns, "ping", "-n", "-q", "-c", "1", "-W", "0.1", addr],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode == 0

took = []
for i in range(runs):
    pod = f"bench-{i}"
    with open(f"{manifests}/{pod}.yaml", "w") as f:
        f.write(f"apiVersion: v1\nkind: Pod\nmetadata: {{name: {pod}, namespace: red, labels: {{net: red}}}}\n"
                "spec: {containers: [{name: app, image: busybox}]}\n")
    start = time.monotonic()
    while True:
        addr = address(pod)
        if addr and answers(addr):
            break
        if time.monotonic() - start > 60:
            sys.exit(f"{pod} not reachable from east within 60 s")
        time.sleep(0.01)
    took.append((time.monotonic() - start) * 1000)
    time.sleep(0.5)

took.sort()
p99 = took[min(len(took) - 1, round(0.99 * (len(took) - 1)))]
print(f"{runs} members joining in west, reachable from east: "
      f"p50 {statistics.median(took):.0f} ms, p99 {p99:.0f} ms, max {took[-1]:.0f} ms")
EOF
