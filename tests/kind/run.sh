#!/usr/bin/env bash
# Wireway end to end on kind clusters: real Kubernetes, kernel WireGuard, real pods.
#
#   bash tests/kind/run.sh            up, then test, then down (what CI runs)
#   bash tests/kind/run.sh up         create the clusters, build and load the images, install
#   bash tests/kind/run.sh test       apply the samples and check statuses and the ping matrix
#   bash tests/kind/run.sh federate   (with WIREWAY_KIND_SECOND=1) federate the two clusters
#                                     with config/samples/multicluster's east and west, and
#                                     ping across them both ways
#   bash tests/kind/run.sh logs       collect logs into tests/kind/logs/
#   bash tests/kind/run.sh down       delete the clusters
#
# Needs docker (a running engine), kind (0.27 or later), kubectl, jq and cargo. The first
# cluster is `wireway`; a second, `wireway-b`, is made when WIREWAY_KIND_SECOND=1, and
# then `all` also federates the two (docs/federation.md). On failure the logs are
# collected before the script exits.
set -euo pipefail

repo=$(cd "$(dirname "$0")/../.." && pwd)
here=$repo/tests/kind
cluster=${WIREWAY_KIND_CLUSTER:-wireway}
second=${WIREWAY_KIND_SECOND_CLUSTER:-wireway-b}
context=kind-$cluster
logs=$here/logs
timeout=${WIREWAY_KIND_TIMEOUT:-300s}

say() { printf '\n==> %s\n' "$*"; }
fail() { printf 'FAIL: %s\n' "$*" >&2; exit 1; }
k() { kubectl --context "$context" "$@"; }

need() {
    local tool
    for tool in "$@"; do
        command -v "$tool" >/dev/null || fail "$tool is needed (see tests/kind/README.md)"
    done
    docker info >/dev/null 2>&1 || fail "no Docker engine answers: kind needs one"
}

clusters() {
    printf '%s\n' "$cluster"
    if [ "${WIREWAY_KIND_SECOND:-0}" = 1 ]; then
        printf '%s\n' "$second"
    fi
}

up() {
    need docker kind kubectl cargo
    local name
    say "clusters"
    for name in $(clusters); do
        if ! kind get clusters | grep -qx "$name"; then
            kind create cluster --name "$name" --config "$here/cluster.yaml" --wait 120s
        fi
    done
    say "images"
    docker build -f "$repo/Dockerfile.operator" -t wireway-operator:kind "$repo"
    docker build -f "$repo/Dockerfile.agent" -t wireway-agent:kind "$repo"
    for name in $(clusters); do
        kind load docker-image wireway-operator:kind wireway-agent:kind --name "$name"
    done
    say "install"
    for name in $(clusters); do
        kubectl --context "kind-$name" apply --server-side -k "$here/overlay"
        # The operator's serving certificate and the CA the agents trust: each cluster its
        # own CA and trust domain.
        (cd "$repo" && cargo run -q --locked -p wireway-cli -- certs kubernetes --trust-domain "$(trust_domain "$name")") |
            kubectl --context "kind-$name" apply --server-side -f -
        kubectl --context "kind-$name" -n wireway-system set env deployment/wireway-operator \
            WIREWAY_TRUST_DOMAIN="$(trust_domain "$name")" WIREWAY_FEDERATION_LISTEN=0.0.0.0:7443
        kubectl --context "kind-$name" apply --server-side -f - <<<"$federation_service"
        kubectl --context "kind-$name" -n wireway-system rollout status deployment/wireway-operator --timeout "$timeout"
        kubectl --context "kind-$name" -n wireway-system rollout status daemonset/wireway-agent --timeout "$timeout"
    done
}

# Each cluster's trust domain: the first keeps the samples' (cluster.local; it plays
# east of the multicluster sample when federating), the second is west's.
trust_domain() {
    if [ "$1" = "$second" ]; then
        echo west.acme.example
    else
        echo cluster.local
    fi
}

# The federation API on every node's port 30743 (the operator's readiness is its
# leadership: only the leader gets connections), and its NetworkPolicy.
federation_service='
apiVersion: v1
kind: Service
metadata: {name: wireway-federation, namespace: wireway-system}
spec:
  type: NodePort
  selector: {app.kubernetes.io/name: wireway-operator}
  ports: [{name: federation, port: 7443, targetPort: 7443, nodePort: 30743, protocol: TCP}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: wireway-federation, namespace: wireway-system}
spec:
  podSelector: {matchLabels: {app.kubernetes.io/name: wireway-operator}}
  policyTypes: [Ingress]
  ingress: [{ports: [{port: 7443, protocol: TCP}]}]
'

# Workload addresses: "namespace/pod service address" per admitted member of a pod.
memberships() {
    k get endpoints.wireway.dev -A -o json | jq -r '
      .items[] | . as $e
      | ($e.spec.networkService.namespace // $e.metadata.namespace) as $sns
      | ($e.status.members // [])[]
      | select(.admitted and .address != null and .node != null)
      | "\($e.metadata.namespace)/\(.workload) \($sns)/\($e.spec.networkService.name) \(.address)"'
}

# Whether pod $1 (namespace/name) is an admitted member of service $2, in the
# memberships $3.
member_of() {
    awk -v pod="$1" -v svc="$2" '$1 == pod && $2 == svc { found = 1 } END { exit !found }' <<<"$3"
}

check_matrix() {
    say "reachability: every sample pod pings every workload address"
    local pods members row col svc addr expected got ns failures=0 cells=0
    pods=$(for ns in red green other; do
        k get pods -n "$ns" -o jsonpath='{range .items[*]}{.metadata.namespace}/{.metadata.name}{"\n"}{end}'
    done)
    members=$(memberships)
    [ -n "$members" ] || fail "no admitted members in the Endpoints' statuses"
    printf '%s\n' "$members"
    for row in $pods; do
        while read -r col svc addr; do
            [ "$row" = "$col" ] && continue
            if member_of "$row" "$svc" "$members"; then expected=yes; else expected=no; fi
            if k exec -n "${row%/*}" "${row#*/}" -- ping -c 3 -i 0.3 -W 2 "$addr" >/dev/null 2>&1; then
                got=yes
            else
                got=no
            fi
            cells=$((cells + 1))
            printf '%-16s -> %-16s %-13s %-15s expected %-3s got %s\n' "$row" "$col" "$svc" "$addr" "$expected" "$got"
            if [ "$expected" != "$got" ]; then failures=$((failures + 1)); fi
        done <<<"$members"
    done
    [ "$cells" -gt 0 ] || fail "no cells measured"
    [ "$failures" = 0 ] || fail "$failures of $cells cells differ from the plan"
    echo "all $cells cells as planned"
}

check_statuses() {
    say "statuses, conditions and printer columns"
    k get networkservices,endpoints.wireway.dev,admissions -A
    local header column
    header=$(k get networkservices -A | head -n 1)
    for column in CIDR NODES MEMBERS READY; do
        grep -qw "$column" <<<"$header" || fail "kubectl get networkservices lacks the $column column"
    done
    header=$(k get endpoints.wireway.dev -A | head -n 1)
    for column in SERVICE ADMITTED REJECTED READY; do
        grep -qw "$column" <<<"$header" || fail "kubectl get endpoints.wireway.dev lacks the $column column"
    done
    local reason
    reason=$(k get endpoints.wireway.dev -n other join-red -o jsonpath='{.status.conditions[?(@.type=="Ready")].reason}')
    [ "$reason" = NotAdmitted ] || fail "join-red is $reason, not NotAdmitted"
    local generation observed
    generation=$(k get networkservice -n red red -o jsonpath='{.metadata.generation}')
    observed=$(k get networkservice -n red red -o jsonpath='{.status.observedGeneration}')
    [ "$generation" = "$observed" ] || fail "red's observedGeneration $observed is not its generation $generation"
    k get events -n other --field-selector reason=NotAdmitted -o name | grep -q . ||
        fail "no NotAdmitted event on join-red"
    local finalizers
    finalizers=$(k get networkservice -n red red -o jsonpath='{.metadata.finalizers}')
    grep -q wireway.dev/cleanup <<<"$finalizers" || fail "red lacks the finalizer wireway.dev/cleanup"
    # Every node's agent published its key.
    local unkeyed
    unkeyed=$(k get nodes -o json | jq -r '.items[] | select(.metadata.annotations["wireway.dev/public-key"] == null) | .metadata.name')
    [ -z "$unkeyed" ] || fail "nodes without wireway.dev/public-key: $unkeyed"
}

check_leader() {
    say "leader election: one of the operator's replicas holds the Lease"
    local holder
    holder=$(k -n wireway-system get lease wireway-operator -o jsonpath='{.spec.holderIdentity}')
    [ -n "$holder" ] || fail "no operator holds the Lease"
    echo "leader: $holder"
}

test_samples() {
    need kubectl jq
    say "samples"
    k apply --server-side -f "$repo/config/samples/"
    local ns
    for ns in red green other; do
        k wait --for=condition=Ready pod --all -n "$ns" --timeout "$timeout"
    done
    k wait --for=condition=Ready networkservice --all -A --timeout "$timeout"
    for ns in red green; do
        k wait --for=condition=Ready "endpoints.wireway.dev/$ns-members" -n "$ns" --timeout "$timeout"
    done
    check_statuses
    check_leader
    check_matrix
    say "deleting red waits for its cleanup, then the finalizer goes"
    k delete networkservice -n red red --timeout "$timeout"
    say "all checks passed"
}

# A PeerCluster for cluster $2 (named $3, slice $4 of red/red), applied to cluster $1.
peer_cluster() {
    local from=$1 to=$2 name=$3 slice=$4 address bundle
    address=$(kubectl --context "kind-$to" get nodes -o jsonpath='{.items[0].status.addresses[?(@.type=="InternalIP")].address}'):30743
    bundle=$(kubectl --context "kind-$to" -n wireway-system get configmap wireway-ca -o jsonpath='{.data.ca\.crt}')
    jq -n --arg name "$name" --arg td "$(trust_domain "$to")" --arg address "$address" \
        --arg bundle "$bundle" --arg slice "$slice" '{
        apiVersion: "wireway.dev/v1alpha1", kind: "PeerCluster",
        metadata: {name: $name},
        spec: {trustDomain: $td, address: $address, trustBundle: $bundle,
               services: [{namespace: "red", name: "red", prefix: $slice}]}}' |
        kubectl --context "kind-$from" apply --server-side -f -
}

# Pod $2 (namespace/name) of cluster $1: its address in red/red.
red_address() {
    kubectl --context "kind-$1" get endpoints.wireway.dev -n red red-members -o json |
        jq -r --arg pod "${2#*/}" '.status.members[] | select(.workload == $pod and .admitted) | .address'
}

federate() {
    need kubectl jq
    [ "${WIREWAY_KIND_SECOND:-0}" = 1 ] || fail "federation needs WIREWAY_KIND_SECOND=1"
    local east=$cluster west=$second ns from to address connected
    say "federation: east ($east) and west ($west) share red/red"
    kubectl --context "kind-$east" apply --server-side -f "$repo/config/samples/multicluster/east/"
    # West admits east by its trust domain, which is cluster.local here.
    cat "$repo"/config/samples/multicluster/west/*.yaml | sed "s/east\.acme\.example/$(trust_domain "$east")/g" |
        kubectl --context "kind-$west" apply --server-side -f -
    peer_cluster "$east" "$west" west 10.100.64.0/18
    peer_cluster "$west" "$east" east 10.100.0.0/18
    for name in "$east" "$west"; do
        kubectl --context "kind-$name" wait --for=condition=Ready pod --all -n red --timeout "$timeout"
        kubectl --context "kind-$name" wait --for=condition=Ready networkservice -n red red --timeout "$timeout"
    done
    for pair in "$east:west" "$west:east"; do
        from=${pair%%:*}
        for _ in $(seq 60); do
            connected=$(kubectl --context "kind-$from" get networkservice -n red red -o json |
                jq -r --arg peer "${pair#*:}" '[.status.peers[]? | select(.cluster == $peer and .connected and .membersAdmitted > 0)] | length')
            [ "$connected" = 1 ] && break
            sleep 2
        done
        [ "$connected" = 1 ] || fail "$from does not hear from ${pair#*:}"
    done
    for pair in "$east:red/red-e1:$west:red/red-w1" "$west:red/red-w1:$east:red/red-e2"; do
        IFS=: read -r from pod to target <<<"$pair"
        address=$(red_address "$to" "$target")
        [ -n "$address" ] || fail "$target has no address in $to"
        kubectl --context "kind-$from" exec -n red "${pod#*/}" -- ping -c 3 -i 0.3 -W 2 "$address" >/dev/null ||
            fail "$from $pod does not reach $to $target ($address)"
        echo "$from $pod -> $to $target ($address): yes"
    done
    say "federation checks passed"
}

collect_logs() {
    mkdir -p "$logs"
    local name
    for name in $(clusters); do
        kind export logs "$logs/$name" --name "$name" >/dev/null 2>&1 || true
        kubectl --context "kind-$name" get all,networkservices,endpoints.wireway.dev,admissions,events -A -o wide \
            >"$logs/$name-objects.txt" 2>&1 || true
        kubectl --context "kind-$name" -n wireway-system logs -l app.kubernetes.io/name=wireway-operator --all-containers --tail=-1 --prefix \
            >"$logs/$name-operator.log" 2>&1 || true
        kubectl --context "kind-$name" -n wireway-system logs -l app.kubernetes.io/name=wireway-agent --all-containers --tail=-1 --prefix \
            >"$logs/$name-agents.log" 2>&1 || true
    done
    echo "logs in $logs"
}

down() {
    local name
    for name in $(clusters); do
        kind delete cluster --name "$name" || true
    done
}

on_failure() {
    local status=$?
    if [ "$status" != 0 ]; then
        echo "failed (exit $status); collecting logs" >&2
        collect_logs
    fi
    exit "$status"
}

case "${1:-all}" in
    up) trap on_failure EXIT; up ;;
    test) trap on_failure EXIT; test_samples ;;
    federate) trap on_failure EXIT; federate ;;
    logs) collect_logs ;;
    down) down ;;
    all)
        trap on_failure EXIT
        up
        test_samples
        if [ "${WIREWAY_KIND_SECOND:-0}" = 1 ]; then
            federate
        fi
        trap - EXIT
        down
        ;;
    *) fail "unknown command $1 (up, test, logs, down, or nothing for all)" ;;
esac
