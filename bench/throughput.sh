#!/usr/bin/env bash
# Throughput through userspace WireGuard: the agent's device (GotaTun, in its child process,
# as the agent runs it) against wireguard-go, the current one from the Go module proxy and
# Debian's, in the same rig: two namespaces joined by a veth, one tunnel between them,
# iperf3 across the tunnel for SECONDS, with one stream and with four. Beside each figure,
# the CPU the two devices used (their processes' user + system time over the run), in
# cores and in cores per Gbit/s. Needs root, iperf3, wg, Go (for the current wireguard-go)
# and wireguard-go (Debian's; skipped when it is not installed).
#   bash bench/throughput.sh [target/release/wireway-agent] [SECONDS] [RUNS]
set -euo pipefail
agent=${1:-target/release/wireway-agent}
seconds=${2:-10}
runs=${3:-1}
# The wireguard-go measured against, pinned; built once into Go's caches.
wireguard_go_version=v0.0.0-20260522210424-ecfc5a8d5446
gobin=${XDG_CACHE_HOME:-$HOME/.cache}/wireway/wireguard-go-$wireguard_go_version
[ -x "$gobin/wireguard" ] || GOBIN=$gobin go install "golang.zx2c4.com/wireguard@$wireguard_go_version"

tag=wwtp$$
dir=$(mktemp -d)
cleanup() {
    teardown
    rm -rf "$dir"
}
teardown() {
    pkill -f "$dir" 2>/dev/null || true
    pkill -f "${tag}[ab]\$" 2>/dev/null || true
    ip netns del "$tag-1" 2>/dev/null || true
    ip netns del "$tag-2" 2>/dev/null || true
    rm -f "/var/run/wireguard/${tag}a.sock" "/var/run/wireguard/${tag}b.sock"
    sleep 0.5
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

k1=$(wg genkey); k2=$(wg genkey); p1=$(wg pubkey <<<"$k1"); p2=$(wg pubkey <<<"$k2")

# The agent's device: the agent binary's child, the key on its stdin, its own socket.
start_agent() {
    for n in 1 2; do
        local key=$k1 peer=$p2 other=2
        [ "$n" = 2 ] && key=$k2 peer=$p1 other=1
        hexkey "$key" | ip netns exec "$tag-$n" "$agent" wireguard-userspace \
            --interface "${tag}$n" --socket "$dir/$n.sock" 2>/dev/null &
        for _ in $(seq 100); do [ -S "$dir/$n.sock" ] && break; sleep 0.05; done
        uapi "$dir/$n.sock" "listen_port=51820
public_key=$(hexkey "$peer")
endpoint=192.168.99.$other:51820
allowed_ip=10.77.0.$other/32
"
        address "$n" "${tag}$n"
    done
}

# wireguard-go (the binary given): its own socket in /var/run/wireguard, set with wg.
start_wireguard_go() {
    local binary=$1
    for n in 1 2; do
        local key=$k1 peer=$p2 other=2 name=${tag}a
        [ "$n" = 2 ] && key=$k2 peer=$p1 other=1 name=${tag}b
        ip netns exec "$tag-$n" "$binary" "$name" 2>/dev/null
        ip netns exec "$tag-$n" wg set "$name" private-key <(echo "$key") listen-port 51820 \
            peer "$peer" endpoint "192.168.99.$other:51820" allowed-ips "10.77.0.$other/32"
        address "$n" "$name"
    done
}

address() { # SIDE INTERFACE
    ip -n "$tag-$1" addr add "10.77.0.$1/24" dev "$2"
    ip -n "$tag-$1" link set "$2" mtu 1420 up
}

# measure LABEL STREAMS: iperf3 from side 1 to side 2's tunnel address, and the devices' CPU.
measure() {
    ip netns exec "$tag-1" ping -c 1 -W 5 10.77.0.2 >/dev/null
    ip netns exec "$tag-2" iperf3 -s -1 -D >/dev/null
    sleep 0.5
    local pids ticks0 ticks1 mbit
    mapfile -t pids < <(pgrep -f "$dir|${tag}[ab]\$")
    ticks0=$(cpu_ticks "${pids[@]}")
    mbit=$(ip netns exec "$tag-1" iperf3 -c 10.77.0.2 -t "$seconds" -P "$2" -J |
        python3 -c 'import json,sys; print(round(json.load(sys.stdin)["end"]["sum_received"]["bits_per_second"]/1e6))')
    ticks1=$(cpu_ticks "${pids[@]}")
    python3 - "$1" "$2" "$mbit" "$((ticks1 - ticks0))" "$(getconf CLK_TCK)" "$seconds" <<'PY'
import sys
label, streams, mbit, ticks, hz, seconds = sys.argv[1], *map(float, sys.argv[2:])
cores = ticks / hz / seconds
print(f"{label:<40} {int(streams)} stream(s): {mbit:6.0f} Mbit/s   devices {cores:.2f} cores, {cores / (mbit / 1000):.2f} cores per Gbit/s")
PY
}

cpu_ticks() { # user + system time of the processes given, in clock ticks
    local total=0 fields
    for pid in "$@"; do
        read -r -a fields <"/proc/$pid/stat"
        total=$((total + fields[13] + fields[14]))
    done
    echo "$total"
}

for _ in $(seq "$runs"); do
    for streams in 1 4; do
        rig; start_agent
        measure "wireway-agent (GotaTun)" "$streams"; teardown
        rig; start_wireguard_go "$gobin/wireguard"
        measure "wireguard-go ${wireguard_go_version#v0.0.0-}" "$streams"; teardown
        if command -v wireguard-go >/dev/null; then
            rig; start_wireguard_go wireguard-go
            measure "wireguard-go $(wireguard-go --version 2>/dev/null | awk '{print $2; exit}') (Debian)" "$streams"
            teardown
        fi
    done
done
