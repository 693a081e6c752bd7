#!/usr/bin/env bash
# The local mesh composed by hand from its pieces, as `strait local` composes it: what someone running their
# own control plane, node proxies and backends needs to get right, step by step. No root, no Kubernetes: every
# address is on loopback. Ctrl-C (or SIGTERM) stops every piece.
#
#   cargo build --release --bin strait
#   STRAIT=target/release/strait deploy/local/compose.sh
#   curl http://127.0.100.1:8080/          # from 127.0.0.1: the `client` workload of mesh.yaml, on node-a
#
# Settings (environment):
#   STRAIT      the strait binary                       (default: target/release/strait, else `strait` on PATH)
#   CONFIG_DIR  the resources and the mesh description  (default: deploy/local)
#   STATE_DIR   token, CA and logs                      (default: .strait-compose)
#   BASE        the first two octets of the addresses   (default: 127.0; must match the addresses in CONFIG_DIR)
set -euo pipefail

STRAIT=${STRAIT:-target/release/strait}
[[ -x $STRAIT ]] || STRAIT=$(command -v strait) || { echo "no strait binary: cargo build --release --bin strait" >&2; exit 1; }
CONFIG_DIR=${CONFIG_DIR:-deploy/local}
STATE_DIR=${STATE_DIR:-.strait-compose}
BASE=${BASE:-127.0}

CONTROL=$BASE.0.2:15012          # push and certificate signing (TLS)
MONITORING=$BASE.0.2:15014       # the control plane's /metrics, /ready, /live (plain HTTP)
NODE_A=$BASE.1.1                 # node-a's admin (:15000) and metrics (:15020)
NODE_B=$BASE.2.1                 # node-b's

mkdir -p "$STATE_DIR/logs"
pids=()
stop() {
    trap - EXIT INT TERM
    for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    wait || true
}
trap stop EXIT
trap 'exit 0' INT TERM

# GET http://$1$2 with bash alone; succeeds on a 200.
http_ok() {
    local host=${1%:*} port=${1##*:} status
    exec 3<>"/dev/tcp/$host/$port" 2>/dev/null || return 1
    printf 'GET %s HTTP/1.1\r\nhost: %s\r\nconnection: close\r\n\r\n' "$2" "$host" >&3
    read -r -t 5 _ status _ <&3 || status=
    exec 3<&- 3>&-
    [[ $status == 200 ]]
}

wait_for() { # what, command...
    local what=$1; shift
    for _ in $(seq 1 300); do "$@" && return 0; sleep 0.1; done
    echo "timed out waiting for $what; logs in $STATE_DIR/logs" >&2
    exit 1
}

# 1. One bearer token, shared: the control plane accepts exactly this token, every proxy presents it.
if [[ ! -s $STATE_DIR/token ]]; then
    (umask 077; od -An -N32 -tx1 /dev/urandom | tr -d ' \n' > "$STATE_DIR/token")
fi

# 2. The control plane first: it creates the mesh CA in --ca-dir on its first start. The proxies verify the
#    control plane with that CA's root certificate (--root-cert), so they can start only once it exists.
"$STRAIT" control --files "$CONFIG_DIR" --ca-dir "$STATE_DIR/ca" --token-file "$STATE_DIR/token" \
    --listen "$CONTROL" --monitoring "$MONITORING" >"$STATE_DIR/logs/control.log" 2>&1 &
pids+=($!)
wait_for "the mesh CA" test -s "$STATE_DIR/ca/ca.pem"
wait_for "the control plane's first configuration" http_ok "$MONITORING" /ready

# 3. One proxy per node named in mesh.yaml, in explicit mode (no capture, no root). Each gets its own --admin
#    and --metrics address. Only node-a, where the clients run, binds the service addresses (--bind-services):
#    two proxies cannot listen on one address, and node-b only receives through its workloads' tunnels.
proxy() { # node, admin/metrics IP, extra flags...
    local node=$1 ip=$2; shift 2
    "$STRAIT" proxy --node "$node" --mode explicit --control-plane "$CONTROL" \
        --token-file "$STATE_DIR/token" --root-cert "$STATE_DIR/ca/ca.pem" \
        --admin "$ip:15000" --metrics "$ip:15020" "$@" >"$STATE_DIR/logs/$node.log" 2>&1 &
    pids+=($!)
}
proxy node-a "$NODE_A" --bind-services
proxy node-b "$NODE_B"

# 4. The user's backends, on their workloads' addresses (mesh.yaml) and the service's targetPort. Here the demo
#    backend stands in for them; any server listening there works the same.
backend() { # name, address, version
    "$STRAIT" demo-backend --listen "$2:9080" --version "$3" --name "$1" \
        --identity "spiffe://cluster.local/ns/demo/sa/reviews" >"$STATE_DIR/logs/$1.log" 2>&1 &
    pids+=($!)
}
backend reviews-v1 "$BASE.2.2" v1
backend reviews-v2 "$BASE.2.3" v2

wait_for "node-a ready" http_ok "$NODE_A:15000" /ready
wait_for "node-b ready" http_ok "$NODE_B:15000" /ready
echo "composed mesh is up: control plane $CONTROL (monitoring http://$MONITORING/metrics), node-a admin $NODE_A:15000, node-b admin $NODE_B:15000; logs in $STATE_DIR/logs"
wait -n
echo "a piece of the mesh exited; stopping (logs in $STATE_DIR/logs)" >&2
exit 1
