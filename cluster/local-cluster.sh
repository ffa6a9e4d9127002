#!/usr/bin/env bash
# A multi-node Ray cluster on ONE host: a head and N worker nodes, each its own `ray start`
# (--node-ip-address 127.0.0.1), with distinct ports, temp dirs and CPU budgets. For testing what
# only shows on several nodes (placement, shared storage, Jobs) without a cloud account.
#
#   cluster/local-cluster.sh up [N]   start the head and N workers (default 1); idempotent
#   cluster/local-cluster.sh status   list the nodes; exit 1 when the head is down
#   cluster/local-cluster.sh env      print a client's exports: eval "$(cluster/local-cluster.sh env)"
#   cluster/local-cluster.sh down     stop exactly the processes this script started
#
# Environment (defaults in brackets):
#   RAY              the ray CLI                  [<repo>/.venv/bin/ray, else `ray` on PATH]
#   CLUSTER_DIR      state, logs, token, temp dirs [/tmp/mlops-ray-cluster-$USER]
#   BASE_PORT        first port of the block       [16300]
#   WORKER_PORT_BASE first port of worker ranges   [BASE_PORT + 100]
#   WORKER_PORTS_PER_NODE                           [50]
#   CPUS_PER_NODE    logical CPUs of each node     [2]
#   OBJECT_STORE_MB  object store of each node     [500]
#   DASHBOARD        1 = start the dashboard (Jobs API) on the head [1]
#   UP_TIMEOUT       seconds to wait for each node [180]
#   START_TRIES      attempts to start each node   [3]
#
# Port layout (node i: 0 = head, 1..N = workers):
#   BASE+0 GCS (ray.address)   BASE+1 dashboard / Jobs API   BASE+2 Ray Client server
#   BASE+3 autoscaler metrics  BASE+4 dashboard metrics
#   BASE+10+10i .. +5: node manager, object manager, dashboard agent (HTTP), dashboard agent
#   (gRPC), metrics export, runtime-env agent
#   WORKER_PORT_BASE + i*WORKER_PORTS_PER_NODE ..: that node's worker processes
#
# Addresses: clients use 127.0.0.1 (printed by `up`); the dashboard binds 127.0.0.1 only. Ray 2.60
# itself replaces a node IP of 127.0.0.1 by the host's routable address (services.py,
# resolve_ip_for_localhost), so the nodes register as <host ip>, and its GCS, raylet and Ray Client
# servers listen beyond loopback whatever it is told: token authentication is what guards them.
#
# Nodes are told apart by a custom resource, because every node on one host reports the same
# node:<host ip> resource: `mlops_node_head` on the head, `mlops_node_w1`, `mlops_node_w2`, ...
# on the workers (1 unit each). Pin a task with `.options(resources={"mlops_node_w1": 0.01})`.
#
# Token authentication: the cluster gets its own token in $CLUSTER_DIR/auth_token (mode 600),
# every node runs with RAY_AUTH_MODE=token and RAY_AUTH_TOKEN_PATH pointing at it (a worker
# joining a token-auth head needs both); ~/.ray/auth_token is neither read nor written.
#
# `down` stops what `up` started and nothing else: SIGTERM to each recorded `ray start --block`
# (which stops its node's processes), then to what is left of that node's own process group and
# session (agents can outlive their raylet), SIGKILL after a grace period, and last any process
# whose command line names this cluster's temp dirs. It never runs `ray stop`, which would stop
# every Ray of this user on the machine.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(dirname "$here")"
user="${USER:-$(id -un)}"

if [[ -z "${RAY:-}" ]]; then
    if [[ -x "$root/.venv/bin/ray" ]]; then RAY="$root/.venv/bin/ray"; else RAY="$(command -v ray || true)"; fi
fi
CLUSTER_DIR="${CLUSTER_DIR:-/tmp/mlops-ray-cluster-$user}"
BASE_PORT="${BASE_PORT:-16300}"
WORKER_PORT_BASE="${WORKER_PORT_BASE:-$((BASE_PORT + 100))}"
WORKER_PORTS_PER_NODE="${WORKER_PORTS_PER_NODE:-50}"
CPUS_PER_NODE="${CPUS_PER_NODE:-2}"
OBJECT_STORE_MB="${OBJECT_STORE_MB:-500}"
DASHBOARD="${DASHBOARD:-1}"
UP_TIMEOUT="${UP_TIMEOUT:-180}"
START_TRIES="${START_TRIES:-3}"

state="$CLUSTER_DIR/cluster.env"
token_file="$CLUSTER_DIR/auth_token"

die() { echo "local-cluster: $*" >&2; exit 2; }
say() { echo "local-cluster: $*" >&2; }

is_int() { [[ "$1" =~ ^[0-9]+$ ]]; }
for v in BASE_PORT WORKER_PORT_BASE WORKER_PORTS_PER_NODE CPUS_PER_NODE OBJECT_STORE_MB UP_TIMEOUT START_TRIES; do
    is_int "${!v}" || die "$v=${!v} must be a whole number"
done
[[ "$CLUSTER_DIR" == /* ]] || die "CLUSTER_DIR=$CLUSTER_DIR must be an absolute path"
# Ray puts unix sockets under <temp dir>/session_<date>_<pid>/sockets/; the kernel caps a socket
# path at 107 bytes, so a long CLUSTER_DIR fails late and obscurely. Refuse it now.
(( ${#CLUSTER_DIR} <= 40 )) || die "CLUSTER_DIR=$CLUSTER_DIR is ${#CLUSTER_DIR} characters; use at most 40 \
(Ray's socket paths under it must stay below 107 bytes), e.g. CLUSTER_DIR=/tmp/mlc-$user"

node_name() { if (( $1 == 0 )); then echo head; else echo "w$1"; fi; }
svc_port() { echo $((BASE_PORT + 10 + 10 * $1 + $2)); }      # node, slot 0..5
gcs_port() { echo "$BASE_PORT"; }
dash_port() { echo $((BASE_PORT + 1)); }

stat_field() { sed 's/^.*) //' "/proc/$1/stat" 2>/dev/null | awk -v f="$2" '{print $f}' || true; }  # after comm
alive() {   # pid -> 0 if it runs and is not a zombie
    [[ -n "$1" ]] && kill -0 "$1" 2>/dev/null || return 1
    [[ "$(stat_field "$1" 1)" != Z ]]
}
listening() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
pid_of() { cat "$CLUSTER_DIR/pids/$1.pid" 2>/dev/null || true; }
pgid_of() { stat_field "$1" 3; }

# The environment every node (and `status`) runs with: token auth with this cluster's token
# (RAY_AUTH_TOKEN would take precedence over the file, so it is removed); no drain on SIGTERM:
# by default a node waits up to 30 s for its work to drain before it stops, which only delays
# `down` of a throwaway cluster. The head's autoscaler and dashboard export Prometheus metrics on
# fixed ports (44217, 44227) unless told otherwise: move them into the block. Serve's proxy sends
# every request to a replica on its own node while there is one (and with direct ingress it runs
# on the head only): RAY_SERVE_PROXY_PREFER_LOCAL_NODE_ROUTING=0 spreads it over all nodes' replicas.
ray_env=(env -u RAY_AUTH_TOKEN -u RAY_ADDRESS RAY_AUTH_MODE=token RAY_AUTH_TOKEN_PATH="$token_file"
         RAY_USAGE_STATS_ENABLED=0 RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S=0
         RAY_SERVE_PROXY_PREFER_LOCAL_NODE_ROUTING=0
         AUTOSCALER_METRIC_PORT=$((BASE_PORT + 3)) DASHBOARD_METRIC_PORT=$((BASE_PORT + 4)))

print_client_info() {
    local n="$1"
    cat <<EOF
mlops-ray local cluster: head + $n worker node(s) on 127.0.0.1, $CPUS_PER_NODE CPUs each
  ray.address: 127.0.0.1:$(gcs_port)          # the pipeline config's ray: section
EOF
    if [[ "$DASHBOARD" == 1 ]]; then
        echo "  jobs:        http://127.0.0.1:$(dash_port)   # the Jobs API: mlops-ray submit / ray job submit --address"
    fi
    cat <<EOF
  node resources: mlops_node_head$(for i in $(seq 1 "$n"); do printf ', mlops_node_w%s' "$i"; done)
  token:       clients need RAY_AUTH_MODE=token and this cluster's token:
               export RAY_AUTH_MODE=token RAY_AUTH_TOKEN_PATH=$token_file
               (or: eval "\$($0 env)"; HTTP clients send "Authorization: Bearer <token>")
  stop:        $0 down
EOF
}

# ------------------------------------------------------------------------------- up
start_node() {   # index -> starts `ray start --block` in its own session; records the pid
    local i="$1" name; name="$(node_name "$i")"
    local wmin=$((WORKER_PORT_BASE + i * WORKER_PORTS_PER_NODE))
    local wmax=$((wmin + WORKER_PORTS_PER_NODE - 1))
    local args=(start --block --disable-usage-stats --node-ip-address 127.0.0.1
        --temp-dir "$CLUSTER_DIR/$name"
        --num-cpus "$CPUS_PER_NODE" --num-gpus 0
        --object-store-memory $((OBJECT_STORE_MB * 1024 * 1024))
        --resources "{\"mlops_node_$name\": 1}"
        --node-manager-port "$(svc_port "$i" 0)" --object-manager-port "$(svc_port "$i" 1)"
        --dashboard-agent-listen-port "$(svc_port "$i" 2)" --dashboard-agent-grpc-port "$(svc_port "$i" 3)"
        --metrics-export-port "$(svc_port "$i" 4)" --runtime-env-agent-port "$(svc_port "$i" 5)"
        --min-worker-port "$wmin" --max-worker-port "$wmax")
    if (( i == 0 )); then
        # Ray starts a Ray Client server (ray://) whenever its dependencies are installed (it
        # cannot be turned off from `ray start`); give it a port of the block, not 10001.
        args+=(--head --port "$(gcs_port)" --ray-client-server-port $((BASE_PORT + 2)))
        if [[ "$DASHBOARD" == 1 ]]; then
            args+=(--include-dashboard true --dashboard-host 127.0.0.1 --dashboard-port "$(dash_port)")
        else
            args+=(--include-dashboard false)
        fi
    else
        args+=(--address "127.0.0.1:$(gcs_port)")
    fi
    mkdir -p "$CLUSTER_DIR/$name"
    # exec env -> exec setsid -> exec ray: one pid, which becomes the leader of its own process
    # group and session, so `down` reaches the node and all its children (GCS, raylet, agents,
    # workers, whose titles no longer name the temp dir) by that one id.
    ( exec "${ray_env[@]}" setsid "$RAY" "${args[@]}" >"$CLUSTER_DIR/logs/$name.log" 2>&1 </dev/null ) &
    local pid=$! deadline=$((SECONDS + 5))
    until [[ "$(pgid_of "$pid")" == "$pid" ]]; do      # setsid done (before it, the group is ours)
        (( SECONDS < deadline )) && alive "$pid" || { say "node $name did not start; see $CLUSTER_DIR/logs/$name.log"; return 1; }
        sleep 0.05
    done
    echo "$pid" >"$CLUSTER_DIR/pids/$name.pid"
}

wait_started() {   # name pid -> waits for "Ray runtime started." in its log
    local name="$1" pid="$2" deadline=$((SECONDS + UP_TIMEOUT))
    while ! grep -q "Ray runtime started" "$CLUSTER_DIR/logs/$name.log" 2>/dev/null; do
        if ! alive "$pid"; then
            say "node $name exited while starting; from $CLUSTER_DIR/logs/$name.log:"
            grep -v '^[[:space:]]' "$CLUSTER_DIR/logs/$name.log" | tail -n 3 >&2 || true   # no traceback body
            diagnose "$name"
            return 1
        fi
        (( SECONDS < deadline )) || { say "node $name did not start within ${UP_TIMEOUT}s; see $CLUSTER_DIR/logs/$name.log"; return 1; }
        sleep 0.3
    done
}

diagnose() {   # name -> says why a node's raylet gave up, when its log tells
    local log="$CLUSTER_DIR/$1/session_latest/logs/raylet.out"
    if grep -q "Timed out waiting for file .*dashboard_agent" "$log" 2>/dev/null; then
        say "cause: the raylet of $1 gave up waiting for its dashboard agent (Ray 2.60 waits 15 s); the machine" \
            "is busy (load average $(cut -d' ' -f1 /proc/loadavg) on $(nproc) cores): retry when it is quieter"
    fi
    return 0
}

# One node at a time, each tried up to START_TRIES times: a raylet gives its Python dashboard agent
# 15 s (fixed in Ray 2.60) to start and aborts with "Timed out waiting for file .../
# dashboard_agent_listen_port_..." when it is slower, which happens on a small, busy machine, more
# so with nodes starting together.
start_with_retry() {   # index -> 0 once the node runs; else stops the whole cluster, returns 1
    local i="$1" name try; name="$(node_name "$1")"
    for try in $(seq 1 "$START_TRIES"); do
        start_node "$i" && wait_started "$name" "$(pid_of "$name")" && return 0
        stop_groups "$name"
        (( try < START_TRIES )) && say "node $name failed to start (try $try of $START_TRIES); trying again"
    done
    say "node $name failed $START_TRIES times (a busy machine? see $CLUSTER_DIR/logs/$name.log); stopping the cluster"
    cmd_down >/dev/null 2>&1 || true
    return 1
}

check_ports_free() {   # n -> fails naming the first port already taken
    local n="$1" p i s
    local ports=("$(gcs_port)" $((BASE_PORT + 2)) $((BASE_PORT + 3)) $((BASE_PORT + 4)))
    [[ "$DASHBOARD" == 1 ]] && ports+=("$(dash_port)")
    for i in $(seq 0 "$n"); do for s in 0 1 2 3 4 5; do ports+=("$(svc_port "$i" "$s")"); done; done
    for p in "${ports[@]}"; do
        if listening "$p"; then
            die "port $p (127.0.0.1) is already in use by another program; choose another block, e.g. BASE_PORT=$((BASE_PORT + 1000)) $0 up $n"
        fi
    done
}

cmd_up() {
    local n="${1:-1}"
    is_int "$n" && (( n >= 0 )) || die "usage: $0 up [N]  (N = number of worker nodes, default 1), got '$n'"
    [[ -n "$RAY" && -x "$(command -v "$RAY" || echo "$RAY")" ]] || \
        die "no ray CLI found (RAY=${RAY:-unset}); run \`make setup\` or set RAY=/path/to/ray"
    local last_svc=$((BASE_PORT + 10 + 10 * n + 5)) wmax=$((WORKER_PORT_BASE + (n + 1) * WORKER_PORTS_PER_NODE - 1))
    if (( WORKER_PORT_BASE <= last_svc && wmax >= BASE_PORT )); then
        die "worker ports $WORKER_PORT_BASE-$wmax overlap the service ports $BASE_PORT-$last_svc of $n workers; \
set WORKER_PORT_BASE above $last_svc"
    fi
    (( wmax <= 65535 )) || die "worker ports would end at $wmax (> 65535); lower WORKER_PORT_BASE or WORKER_PORTS_PER_NODE"
    mkdir -p "$CLUSTER_DIR/pids" "$CLUSTER_DIR/logs"
    chmod 700 "$CLUSTER_DIR"

    if alive "$(pid_of head)"; then                     # already up: same block, add missing workers
        # shellcheck disable=SC1090
        local running_base; running_base="$(. "$state" 2>/dev/null; echo "${BASE_PORT:-}")"
        [[ "$running_base" == "$BASE_PORT" ]] || \
            die "a cluster already runs from $CLUSTER_DIR on BASE_PORT=$running_base; use that, or run \`$0 down\` first"
    else
        check_ports_free "$n"
        rm -f "$CLUSTER_DIR"/pids/*.pid
        if [[ ! -s "$token_file" ]]; then           # this cluster's own token, never printed
            (umask 077; od -An -tx1 -N32 /dev/urandom | tr -d ' \n' >"$token_file")
        fi
        chmod 600 "$token_file"
        start_with_retry 0 || exit 1
    fi
    local i
    for i in $(seq 1 "$n"); do
        alive "$(pid_of "w$i")" || start_with_retry "$i" || exit 1
    done
    local have=0 f
    for f in "$CLUSTER_DIR"/pids/w*.pid; do [[ -f "$f" ]] && have=$((have + 1)); done
    cat >"$state" <<EOF
BASE_PORT=$BASE_PORT
WORKER_PORT_BASE=$WORKER_PORT_BASE
WORKERS=$have
CPUS_PER_NODE=$CPUS_PER_NODE
DASHBOARD=$DASHBOARD
RAY_ADDRESS_GCS=127.0.0.1:$(gcs_port)
RAY_ADDRESS_JOBS=http://127.0.0.1:$(dash_port)
RAY_AUTH_TOKEN_PATH=$token_file
EOF
    print_client_info "$have"
}

# ------------------------------------------------------------------------------- status
cmd_status() {
    local head_pid; head_pid="$(pid_of head)"
    if ! alive "$head_pid"; then
        echo "local-cluster: the head is not running (no live head in $CLUSTER_DIR); start it with \`$0 up\`" >&2
        exit 1
    fi
    # shellcheck disable=SC1090
    . "$state"
    local f name pid
    echo "nodes started by this script ($CLUSTER_DIR):"
    for f in "$CLUSTER_DIR"/pids/*.pid; do
        name="$(basename "$f" .pid)"; pid="$(cat "$f")"
        if alive "$pid"; then echo "  $name  pid $pid  running  resource mlops_node_$name"; \
        else echo "  $name  pid $pid  NOT running (see $CLUSTER_DIR/logs/$name.log)"; fi
    done
    echo "ray status --address $RAY_ADDRESS_GCS:"
    "${ray_env[@]}" "$RAY" status --address "$RAY_ADDRESS_GCS" || {
        echo "local-cluster: the head process runs but its GCS at $RAY_ADDRESS_GCS does not answer" >&2; exit 1; }
}

cmd_env() {
    [[ -f "$state" ]] || { echo "local-cluster: no cluster in $CLUSTER_DIR; run \`$0 up\`" >&2; exit 1; }
    # shellcheck disable=SC1090
    . "$state"
    echo "export RAY_AUTH_MODE=token RAY_AUTH_TOKEN_PATH=$RAY_AUTH_TOKEN_PATH"
    # the Jobs CLI's address; not RAY_ADDRESS, which ray.init() and the Jobs CLI would both read
    [[ "$DASHBOARD" == 1 ]] && echo "export RAY_API_SERVER_ADDRESS=$RAY_ADDRESS_JOBS"
    echo "# ray.address for configs: $RAY_ADDRESS_GCS  (e.g. mlops-ray run CONFIG --set ray.address=$RAY_ADDRESS_GCS)"
}

# ------------------------------------------------------------------------------- down
procs() { ps -u "$(id -u)" -o pid=,pgid=,args= 2>/dev/null || true; }   # this user's processes

group_pids() {   # recorded pid -> the live members of its process group (and session: setsid made
    # the node the leader of both, so a group with that id and session is this cluster's node)
    ps -u "$(id -u)" -o pid=,pgid=,sid=,stat= 2>/dev/null | awk -v g="$1" '$2 == g && $3 == g && $4 !~ /^Z/ {print $1}' || true
}

strays() {   # processes outside the recorded groups whose command line names this cluster's dirs
    local table; table="$(procs)"        # captured first: a grep in a pipe with ps would find itself
    grep -F -- "$CLUSTER_DIR/" <<<"$table" | awk -v me="$$" '$1 != me {print $1}' || true
}

wait_gone() {   # seconds test-command... -> waits until the command prints nothing
    local deadline=$((SECONDS + $1)); shift
    while [[ -n "$("$@")" ]] && (( SECONDS < deadline )); do sleep 0.2; done
}

stop_groups() {   # name... -> SIGTERM to each leader (Ray stops its children), then to what is
    # left of its group (agents outlive their raylet), then SIGKILL
    local name pid groups=()
    for name in "$@"; do
        pid="$(pid_of "$name")"
        [[ -n "$pid" && -n "$(group_pids "$pid")" ]] || continue
        groups+=("$pid")
        kill -TERM "$pid" 2>/dev/null || true
    done
    (( ${#groups[@]} )) || return 0
    leaders() { for g in "${groups[@]}"; do alive "$g" && echo "$g"; done; return 0; }
    members() { for g in "${groups[@]}"; do group_pids "$g"; done; return 0; }
    wait_gone 10 leaders
    for pid in $(members); do kill -TERM "$pid" 2>/dev/null || true; done
    wait_gone 3 members
    for pid in $(members); do kill -KILL "$pid" 2>/dev/null || true; done
    wait_gone 3 members
}

cmd_down() {
    [[ -d "$CLUSTER_DIR/pids" ]] || { echo "local-cluster: nothing to stop (no cluster in $CLUSTER_DIR)"; return 0; }
    local workers=() f
    for f in "$CLUSTER_DIR"/pids/w*.pid; do [[ -f "$f" ]] && workers+=("$(basename "$f" .pid)"); done
    if (( ${#workers[@]} )); then stop_groups "${workers[@]}"; fi     # workers first, while the GCS answers
    stop_groups head
    local pid left
    for pid in $(strays); do kill -TERM "$pid" 2>/dev/null || true; done
    wait_gone 3 strays
    for pid in $(strays); do kill -KILL "$pid" 2>/dev/null || true; done
    wait_gone 2 strays
    left="$(strays; for f in "$CLUSTER_DIR"/pids/*.pid; do [[ -f "$f" ]] && group_pids "$(cat "$f")"; done; true)"
    if [[ -n "$left" ]]; then
        echo "local-cluster: processes still running: $(echo "$left" | tr '\n' ' ')" >&2
        exit 1
    fi
    rm -f "$CLUSTER_DIR"/pids/*.pid "$state"
    echo "local-cluster: stopped; logs kept in $CLUSTER_DIR (remove the folder to clean up, the token with it)"
}

case "${1:-}" in
    up) shift; cmd_up "$@" ;;
    down) cmd_down ;;
    status) cmd_status ;;
    env) cmd_env ;;
    *) echo "usage: $0 up [N] | down | status | env" >&2; exit 2 ;;
esac
