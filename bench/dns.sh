#!/usr/bin/env bash
# The agent's DNS under load from one member: a lab of the samples, dnsperf in red-a's
# namespace against its gateway for 10 s per run, with names of red's zone (answered by
# the agent: an Endpoint's three members, one member, an external host, a missing name),
# then with a name forwarded to an upstream (dnsmasq on the lab's underlay). Prints
# dnsperf's summary of each run. Needs root, dnsperf and dnsmasq, and the release
# binaries (make build, or cargo build --release --workspace --bins).
#   bash bench/dns.sh [target/release/wireway]
set -euo pipefail
wireway=${1:-target/release/wireway}
name=dnsb$((RANDOM % 1000))
dir=$(mktemp -d)
upstream=172.31.255.253
cleanup() {
    [ -f "$dir/dnsmasq.pid" ] && kill "$(cat "$dir/dnsmasq.pid")" 2>/dev/null || true
    "$wireway" lab --name "$name" --dir "$dir/lab" down >/dev/null 2>&1 || true
    rm -rf "$dir"
}
trap cleanup EXIT

"$wireway" lab --name "$name" --dir "$dir/lab" up config/samples \
    --dns-upstream "$upstream:53" >/dev/null 2>&1
ip -n "ww$name-underlay" addr add "$upstream/16" dev br0
ip netns exec "ww$name-underlay" dnsmasq --no-resolv --no-hosts --bind-interfaces \
    --listen-address="$upstream" --address=/upstream.example/192.0.2.53 \
    --pid-file="$dir/dnsmasq.pid" --cache-size=1000

zone=red.red.wireway.internal
cat >"$dir/local" <<EOF
red-members.red.$zone A
red-a.red-members.red.$zone A
backup-vm.red.$zone A
nobody.red-members.red.$zone A
EOF
echo "upstream.example A" >"$dir/forwarded"

member="ww$name-p-red.red-a"
# The first query of each kind, so neither ARP nor the upstream's first answer is timed.
ip netns exec "$member" dig +short @169.254.77.1 "red-members.red.$zone" >/dev/null
ip netns exec "$member" dig +short @169.254.77.1 upstream.example >/dev/null

# Light load (one query at a time, 1,000 a second: latency without queueing), then as
# much as 10 clients with 100 queries outstanding get through.
for run in local forwarded; do
    for load in "-c 1 -q 1 -Q 1000" "-c 10 -q 100"; do
        echo "== $run names, dnsperf $load, 10 s"
        # shellcheck disable=SC2086 # $load is words
        ip netns exec "$member" dnsperf -s 169.254.77.1 -d "$dir/$run" -l 10 $load 2>&1 |
            grep -E "Queries (sent|completed|lost)|Queries per second|Average Latency|Latency StdDev|Response codes"
    done
done
echo "== the agent's own process: $(ps -o rss=,pcpu= -C wireway-agent | head -3 | tr '\n' ';')"
