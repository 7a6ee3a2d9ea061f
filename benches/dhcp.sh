#!/usr/bin/env bash
# DHCP benchmark (run by `make bench`, as root), understudy against Kea dhcp4 (memfile,
# single-threaded) and dnsmasq, in the same pair of network namespaces with the same pool,
# one after the other:
#  1. ISC perfdhcp DORA exchanges per second at under 1% drops (a rising rate ladder);
#     this figure is capped by perfdhcp's own share of the 2 cores.
#  2. Server CPU per completed exchange at a fixed offered rate both servers keep up with:
#     utime+stime of the server process (all its threads) from /proc/PID/stat before and
#     after the run, divided by the exchanges perfdhcp completed. This does not depend on
#     the client's share of the CPU. Three runs per server:
#       on-link  perfdhcp as it always is for DHCPv4: it sets giaddr to its own address
#                (in the served subnet, hops 1) and broadcasts to port 67; replies go
#                to giaddr:67;
#       relayed  the same relay agent unicasting to the server's address (what a
#                router's DHCP relay does). understudy requires server_ip inside the
#                one subnet it serves, so the relay's subnet is the server's;
#       renew    renewals at the exchange rate (-f = -r): every client renews (REQUEST
#                with ciaddr) as soon as it is bound, so each DORA is followed by a
#                renewal and the server writes two leases per client. perfdhcp cannot
#                make a fixed set of clients renew "at once" (its renewals only come from
#                leases it acquired in the same run), so this is the heaviest renewal
#                load it generates.
#     After each understudy run the server is SIGKILLed and every address perfdhcp saw
#     ACKed (-x l lists them) must be bound in sqlite.
set -euo pipefail
export LC_ALL=C
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BIN=$(realpath "${UNDERSTUDY_BIN:-$REPO/target/release/understudy}")
RESULTS=$REPO/benches/results/dhcp-latest.txt
CLIENTS=${UNDERSTUDY_BENCH_DHCP_CLIENTS:-60000}
SECS=${UNDERSTUDY_BENCH_DHCP_SECS:-5}
# An empty list skips the ladder (and dnsmasq); RUNS picks the fixed-rate CPU runs.
RATES=${UNDERSTUDY_BENCH_DHCP_RATES-"1000 2000 4000 6000 8000 10000 12000 16000"}
CPU_RATE=${UNDERSTUDY_BENCH_DHCP_CPU_RATE:-3000}
CPU_SECS=${UNDERSTUDY_BENCH_DHCP_CPU_SECS:-10}
RUNS=${UNDERSTUDY_BENCH_DHCP_RUNS:-"onlink relay renew"}
for t in perfdhcp kea-dhcp4 dnsmasq sqlite3; do command -v $t >/dev/null || { echo "bench: $t missing (make bench-deps)" >&2; exit 1; }; done

ID=$$
NS_S=us-dhcpb-s-$ID
NS_C=us-dhcpb-c-$ID
IF_S=udb$((ID % 100000))s
IF_C=udb$((ID % 100000))c
WORK=$(mktemp -d /var/tmp/us-bench-dhcp.XXXXXX)
PID=
cleanup() {
    [ -n "$PID" ] && kill "$PID" 2>/dev/null || true
    wait 2>/dev/null || true
    ip netns del "$NS_S" 2>/dev/null || true
    ip netns del "$NS_C" 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT INT TERM
log() { printf '[dhcp-bench %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }

ip netns add "$NS_S"; ip netns add "$NS_C"
ip link add "$IF_S" type veth peer name "$IF_C"
ip link set "$IF_S" netns "$NS_S"; ip link set "$IF_C" netns "$NS_C"
ip -n "$NS_S" addr add 10.88.0.1/16 dev "$IF_S"; ip -n "$NS_C" addr add 10.88.0.2/16 dev "$IF_C"
RELAY=10.88.0.2
for ns in "$NS_S" "$NS_C"; do ip -n "$ns" link set lo up; done
ip -n "$NS_S" link set "$IF_S" up; ip -n "$NS_C" link set "$IF_C" up

SUBNET=10.88.0.0/16
POOL_FIRST=10.88.1.0
POOL_LAST=10.88.254.254

start_understudy() {
    rm -rf "$WORK/us"; mkdir -p "$WORK/us"
    cat > "$WORK/us/c.toml" <<TOML
data_dir = "$WORK/us"
[dhcp]
interface = "$IF_S"
server_ip = "10.88.0.1"
subnet = "$SUBNET"
range = "$POOL_FIRST-$POOL_LAST"
lease_time = "1h"
per_mac_rate = 1000
TOML
    ip netns exec "$NS_S" "$BIN" serve --config "$WORK/us/c.toml" > "$WORK/us.out" 2>&1 &
    PID=$!
}
start_kea() {
    rm -rf "$WORK/kea"; mkdir -p "$WORK/kea"
    cat > "$WORK/kea/kea.json" <<JSON
{ "Dhcp4": {
    "interfaces-config": { "interfaces": [ "$IF_S" ], "dhcp-socket-type": "raw" },
    "lease-database": { "type": "memfile", "persist": true, "name": "$WORK/kea/leases.csv", "lfc-interval": 0 },
    "multi-threading": { "enable-multi-threading": false },
    "valid-lifetime": 3600,
    "subnet4": [ { "id": 1, "subnet": "$SUBNET", "pools": [ { "pool": "$POOL_FIRST - $POOL_LAST" } ] } ],
    "loggers": [ { "name": "kea-dhcp4", "severity": "ERROR", "output_options": [ { "output": "$WORK/kea/kea.log" } ] } ]
} }
JSON
    KEA_PIDFILE_DIR=$WORK/kea KEA_LOCKFILE_DIR=$WORK/kea ip netns exec "$NS_S" kea-dhcp4 -c "$WORK/kea/kea.json" > "$WORK/kea.out" 2>&1 &
    PID=$!
}
start_dnsmasq() {
    rm -rf "$WORK/dm"; mkdir -p "$WORK/dm"
    ip netns exec "$NS_S" dnsmasq -k --port=0 --interface="$IF_S" --bind-interfaces --dhcp-authoritative --no-ping \
        --dhcp-range="$POOL_FIRST,$POOL_LAST,1h" --dhcp-lease-max=100000 --dhcp-leasefile="$WORK/dm/leases" \
        --pid-file="$WORK/dm/pid" --log-facility="$WORK/dm/log" > "$WORK/dm.out" 2>&1 &
    PID=$!
}
stop() { kill "${1:--TERM}" "$PID" 2>/dev/null || true; wait "$PID" 2>/dev/null || true; PID=; }

# A perfdhcp statistic: pstat BLOCK FIELD-PREFIX (e.g. pstat "REQUEST-ACK***" "received packets").
pstat() {
    awk -v b="Statistics for: $1" -v f="^$2" 'index($0, b) {s=1; next} s && $0 ~ f {sub(/^[^:]*: */, ""); print $1; exit}' <<<"$OUT"
}

# Highest tested rate whose drops stay under 1%: (rate, achieved DORA/s).
measure() {
    local best=0 best_rate=0
    for r in $RATES; do
        local drops drops2 rate
        OUT=$(ip netns exec "$NS_C" perfdhcp -4 -l "$IF_C" -r "$r" -R "$CLIENTS" -p "$SECS" 2>&1 || true)
        drops=$(pstat 'DISCOVER-OFFER***' 'drops ratio')
        drops2=$(pstat 'REQUEST-ACK***' 'drops ratio')
        rate=$(pstat 'REQUEST-ACK***' 'received packets')
        rate=$(awk -v n="${rate:-0}" -v s="$SECS" 'BEGIN { printf "%.0f", n / s }')
        log "  rate $r/s: DO drops ${drops:-?}%, RA drops ${drops2:-?}%, ${rate} DORA/s"
        if awk -v a="${drops:-100}" -v b="${drops2:-100}" 'BEGIN { exit !(a < 1 && b < 1) }'; then
            best=$rate; best_rate=$r
        else
            break
        fi
    done
    echo "$best_rate $best"
}

# utime + stime of a whole process (every thread, live or exited), in clock ticks.
cpu_ticks() {
    local s
    s=$(cat "/proc/$1/stat")
    s=${s##*) }
    # shellcheck disable=SC2086
    set -- $s
    echo $((${12} + ${13}))
}
TICK_US=$((1000000 / $(getconf CLK_TCK)))

# Addresses perfdhcp saw ACKed (-x l lists them; its client-id column is the option 61
# the server echoed, which understudy does not, so the address is the key).
acked_ips() {
    awk -F, '/^\*\*\*Leases for REQUEST-ACK/ {s=1; next} /^\*\*\*/ {s=0} s && $2 ~ /^[0-9.]+$/ {print $2}' <<<"$OUT" | sort -u
}

# One fixed-rate run: server CPU per completed exchange.
# Sets CPU[server.mode] to "completed cpu_us us_per_exchange drops% renewals".
DURABLE_OK=0 DURABLE_MISSING=0
declare -A RES CPU
cpu_run() {
    local server=$1 mode=$2 args t0 t1 acks renews drops
    case $mode in
        onlink) args=(-l "$IF_C" -r "$CPU_RATE") ;;
        relay) args=(-l "$RELAY" -r "$CPU_RATE" 10.88.0.1) ;;
        renew) args=(-l "$IF_C" -r "$CPU_RATE" -f "$CPU_RATE") ;;
    esac
    "start_$server"; sleep 2
    if ! kill -0 "$PID" 2>/dev/null; then
        log "$server did not start:"; cat "$WORK"/*.out >&2; exit 1
    fi
    t0=$(cpu_ticks "$PID")
    OUT=$(ip netns exec "$NS_C" perfdhcp -4 "${args[@]}" -R "$CLIENTS" -p "$CPU_SECS" -x l 2>&1 || true)
    t1=$(cpu_ticks "$PID")
    acks=$(pstat 'REQUEST-ACK***' 'received packets'); acks=${acks:-0}
    renews=0
    [ "$mode" = renew ] && renews=$(pstat 'REQUEST-ACK (renewal)***' 'received packets')
    renews=${renews:-0}
    drops=$(awk -v a="$(pstat 'DISCOVER-OFFER***' 'drops ratio')" -v b="$(pstat 'REQUEST-ACK***' 'drops ratio')" \
        'BEGIN { printf "%.2f", (a > b ? a : b) }')
    if [ "$server" = understudy ]; then
        # A crash right after the run: every lease perfdhcp saw ACKed must be in sqlite.
        stop -KILL
        local db missing n
        db=$(sqlite3 "$WORK/us/understudy.db" "SELECT ip FROM leases WHERE state = 'bound'" | sort -u)
        n=$(acked_ips | wc -l)
        missing=$(comm -23 <(acked_ips) <(echo "$db") | wc -l)
        DURABLE_OK=$((DURABLE_OK + n - missing)); DURABLE_MISSING=$((DURABLE_MISSING + missing))
        log "  $mode: $n ACKed leases, $missing missing from sqlite after SIGKILL"
    else
        stop
    fi
    local n_done=$((acks + renews))
    local us=$(((t1 - t0) * TICK_US))
    local per
    per=$(awk -v c="$us" -v n="$n_done" 'BEGIN { if (n == 0) print "nan"; else printf "%.1f", c / n }')
    log "  $server $mode: $n_done exchanges, server CPU $((us / 1000)) ms, $per us each, drops $drops%"
    CPU[$server.$mode]="$n_done $us $per $drops $renews"
    sleep 1
}

for s in understudy kea dnsmasq; do
    RES[$s]="0 0"
    [ -n "$RATES" ] || continue
    log "$s: DORA/s ladder"
    "start_$s"; sleep 2
    RES[$s]=$(measure)
    stop; sleep 1
done
for mode in $RUNS; do
    for s in understudy kea; do
        log "$s: server CPU, $mode at $CPU_RATE/s"
        cpu_run "$s" "$mode"
    done
done

us=${RES[understudy]#* }; kea=${RES[kea]#* }; dm=${RES[dnsmasq]#* }
field() { awk -v i="$2" '{print $i}' <<<"${CPU[$1]-}"; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b == 0 || a == "nan" || b == "nan") print "nan"; else printf "%.2f", a / b }'; }
row() {
    local label=$1 mode=$2
    printf '%-52s %8s %8s %6s %11s %11s\n' "$label" "$(field understudy.$mode 3)" "$(field kea.$mode 3)" \
        "$(ratio "$(field understudy.$mode 3)" "$(field kea.$mode 3)")" \
        "$(field understudy.$mode 1)/$(field understudy.$mode 4)%" "$(field kea.$mode 1)/$(field kea.$mode 4)%"
}
{
    echo "understudy DHCP benchmark — $(date -Is) on $(nproc) cores; perfdhcp, $CLIENTS simulated clients"
    echo "DORA/s at drops < 1% (${SECS}s per rate step; capped by perfdhcp's own CPU share):"
    printf '%-40s %12s %14s\n' server "DORA/s" "at offered rate"
    printf '%-40s %12s %14s\n' "understudy (sqlite, group commit)" "$us" "${RES[understudy]% *}"
    printf '%-40s %12s %14s\n' "Kea dhcp4 2.2 (memfile, 1 thread)" "$kea" "${RES[kea]% *}"
    printf '%-40s %12s %14s\n' "dnsmasq 2.90 (lease file)" "$dm" "${RES[dnsmasq]% *}"
    echo "Server CPU (utime+stime, /proc/PID/stat) per completed exchange, perfdhcp at $CPU_RATE DORA/s for ${CPU_SECS}s:"
    printf '%-52s %8s %8s %6s %11s %11s\n' "run" "us us" "kea us" ratio "us done/drop" "kea done/drop"
    row "on-link (giaddr in the served subnet)" onlink
    row "relayed (relay $RELAY unicasting to the server)" relay
    row "renew: + renewals at $CPU_RATE/s (per ACK, DORA or renewal)" renew
    echo "renewals ACKed: understudy $(field understudy.renew 5), kea $(field kea.renew 5)"
    echo "understudy ACKed addresses found bound in sqlite after SIGKILL: $DURABLE_OK, missing: $DURABLE_MISSING"
    echo "RATIO dhcp_vs_kea=$(ratio "$us" "$kea")"
    echo "RATIO dhcp_vs_dnsmasq=$(ratio "$us" "$dm")"
    echo "RATIO dhcp_cpu_vs_kea=$(ratio "$(field understudy.onlink 3)" "$(field kea.onlink 3)")"
    echo "RATIO dhcp_cpu_relayed_vs_kea=$(ratio "$(field understudy.relay 3)" "$(field kea.relay 3)")"
    echo "RATIO dhcp_cpu_renew_vs_kea=$(ratio "$(field understudy.renew 3)" "$(field kea.renew 3)")"
} | tee "$RESULTS"
[ "$DURABLE_MISSING" = 0 ]
