#!/usr/bin/env bash
# Throughput through userspace WireGuard, boringtun (as the agent runs it) against
# wireguard-go, in the same rig: two namespaces joined by a veth, one tunnel between
# them, iperf3 across the tunnel for 10 s. Needs root, iperf3, wireguard-go, wg.
#   bash bench/throughput.sh [target/release/wireway-agent]
set -euo pipefail
agent=${1:-target/release/wireway-agent}
tag=wwtp$$
dir=$(mktemp -d)
cleanup() {
    pkill -f "$dir" 2>/dev/null || true
    pkill -f "wireguard-go ${tag}" 2>/dev/null || true
    ip netns del "$tag-1" 2>/dev/null || true
    ip netns del "$tag-2" 2>/dev/null || true
    rm -rf "$dir" "/var/run/wireguard/${tag}a.sock" "/var/run/wireguard/${tag}b.sock"
}
trap cleanup EXIT

rig() {
    ip netns add "$tag-1"; ip netns add "$tag-2"
    ip link add u1 netns "$tag-1" type veth peer u2 netns "$tag-2"
    ip -n "$tag-1" addr add 192.168.99.1/24 dev u1; ip -n "$tag-2" addr add 192.168.99.2/24 dev u2
    for n in 1 2; do ip -n "$tag-$n" link set lo up; ip -n "$tag-$n" link set "u$n" up; done
}

# uapi SOCKET BODY: one UAPI set through a control socket (the agent's device).
uapi() {
    python3 - "$1" "$2" <<'PY'
import socket, sys
s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1])
s.sendall(("set=1\n" + sys.argv[2] + "\n").encode())
answer = s.recv(4096).decode()
assert "errno=0" in answer, answer
PY
}

hexkey() { base64 -d <<<"$1" | od -An -tx1 | tr -d ' \n'; }

measure() { # iperf3 from side 1 to side 2's tunnel address
    ip netns exec "$tag-2" iperf3 -s -1 -D >/dev/null
    sleep 0.5
    ip netns exec "$tag-1" iperf3 -c 10.77.0.2 -t 10 -J | python3 -c 'import json,sys; print(round(json.load(sys.stdin)["end"]["sum_received"]["bits_per_second"]/1e6))'
}

k1=$(wg genkey); k2=$(wg genkey); p1=$(wg pubkey <<<"$k1"); p2=$(wg pubkey <<<"$k2")

rig
for n in 1 2; do
    ip netns exec "$tag-$n" "$agent" wireguard-userspace --interface "${tag}$n" --socket "$dir/$n.sock" 2>/dev/null &
done
sleep 1
uapi "$dir/1.sock" "private_key=$(hexkey "$k1")
listen_port=51820
public_key=$(hexkey "$p2")
endpoint=192.168.99.2:51820
allowed_ip=10.77.0.2/32
"
uapi "$dir/2.sock" "private_key=$(hexkey "$k2")
listen_port=51820
public_key=$(hexkey "$p1")
endpoint=192.168.99.1:51820
allowed_ip=10.77.0.1/32
"
for n in 1 2; do
    ip -n "$tag-$n" addr add "10.77.0.$n/24" dev "${tag}$n"; ip -n "$tag-$n" link set "${tag}$n" mtu 1420 up
done
echo "boringtun (wireway-agent userspace device): $(measure) Mbit/s"
pkill -f "$dir" || true; ip netns del "$tag-1"; ip netns del "$tag-2"; sleep 0.5

rig
ip netns exec "$tag-1" wireguard-go "${tag}a" 2>/dev/null; ip netns exec "$tag-2" wireguard-go "${tag}b" 2>/dev/null
ip netns exec "$tag-1" wg set "${tag}a" private-key <(echo "$k1") listen-port 51820 peer "$p2" endpoint 192.168.99.2:51820 allowed-ips 10.77.0.2/32
ip netns exec "$tag-2" wg set "${tag}b" private-key <(echo "$k2") listen-port 51820 peer "$p1" endpoint 192.168.99.1:51820 allowed-ips 10.77.0.1/32
ip -n "$tag-1" addr add 10.77.0.1/24 dev "${tag}a"; ip -n "$tag-1" link set "${tag}a" mtu 1420 up
ip -n "$tag-2" addr add 10.77.0.2/24 dev "${tag}b"; ip -n "$tag-2" link set "${tag}b" mtu 1420 up
echo "wireguard-go $(wireguard-go --version 2>/dev/null | head -1 | awk '{print $2}'): $(measure) Mbit/s"
