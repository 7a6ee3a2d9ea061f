#!/usr/bin/env bash
# DHCP benchmark (run by `make bench`, as root): ISC perfdhcp DORA exchanges per second
# at under 1% drops against understudy, Kea dhcp4 (memfile, single-threaded) and dnsmasq,
# in the same pair of network namespaces with the same pool, one after the other.
set -euo pipefail
export LC_ALL=C
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BIN=$(realpath "${UNDERSTUDY_BIN:-$REPO/target/release/understudy}")
RESULTS=$REPO/benches/results/dhcp-latest.txt
CLIENTS=${UNDERSTUDY_BENCH_DHCP_CLIENTS:-60000}
SECS=${UNDERSTUDY_BENCH_DHCP_SECS:-10}
RATES=${UNDERSTUDY_BENCH_DHCP_RATES:-"100 200 500 1000 2000 4000 6000 8000 10000 12000 16000"}
for t in perfdhcp kea-dhcp4 dnsmasq; do command -v $t >/dev/null || { echo "bench: $t missing (make bench-deps)" >&2; exit 1; }; done

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
for ns in "$NS_S" "$NS_C"; do ip -n "$ns" link set lo up; done
ip -n "$NS_S" link set "$IF_S" up; ip -n "$NS_C" link set "$IF_C" up
POOL_FIRST=10.88.1.0
POOL_LAST=10.88.254.254

start_understudy() {
    rm -rf "$WORK/us"; mkdir -p "$WORK/us"
    cat > "$WORK/us/c.toml" <<TOML
data_dir = "$WORK/us"
[dhcp]
interface = "$IF_S"
server_ip = "10.88.0.1"
subnet = "10.88.0.0/16"
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
    "subnet4": [ { "id": 1, "subnet": "10.88.0.0/16", "pools": [ { "pool": "$POOL_FIRST - $POOL_LAST" } ] } ],
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
stop() { kill "$PID" 2>/dev/null || true; wait "$PID" 2>/dev/null || true; PID=; }

# Highest tested rate whose drops stay under 1%: (rate, achieved DORA/s).
measure() {
    local best=0 best_rate=0
    for r in $RATES; do
        local out drops rate
        out=$(ip netns exec "$NS_C" perfdhcp -4 -l "$IF_C" -r "$r" -R "$CLIENTS" -p "$SECS" 2>&1 || true)
        drops=$(echo "$out" | awk '/Statistics for: DISCOVER-OFFER/{f=1} f && /^drops ratio/ {print $3; exit}')
        local drops2
        drops2=$(echo "$out" | awk '/Statistics for: REQUEST-ACK/{f=1} f && /^drops ratio/ {print $3; exit}')
        rate=$(echo "$out" | awk '/Statistics for: REQUEST-ACK/{f=1} f && /^received packets/ {print $3; exit}')
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

declare -A RES
for s in understudy kea dnsmasq; do
    log "$s"
    "start_$s"; sleep 2
    RES[$s]=$(measure)
    stop; sleep 1
done
LEASES=$(sqlite3 "$WORK/us/understudy.db" "SELECT count(*) FROM leases WHERE state='bound'" 2>/dev/null || echo "?")
us=${RES[understudy]#* }; kea=${RES[kea]#* }; dm=${RES[dnsmasq]#* }
{
    echo "understudy DHCP benchmark — $(date -Is) on $(nproc) cores; perfdhcp, $CLIENTS simulated clients, ${SECS}s per rate step, drops < 1%"
    printf '%-40s %12s %14s\n' server "DORA/s" "at offered rate"
    printf '%-40s %12s %14s\n' "understudy (sqlite, group commit)" "$us" "${RES[understudy]% *}"
    printf '%-40s %12s %14s\n' "Kea dhcp4 2.2 (memfile, 1 thread)" "$kea" "${RES[kea]% *}"
    printf '%-40s %12s %14s\n' "dnsmasq 2.90 (lease file)" "$dm" "${RES[dnsmasq]% *}"
    echo "understudy leases durable in sqlite after the run: $LEASES"
    echo "RATIO dhcp_vs_kea=$(awk -v a="$us" -v b="$kea" 'BEGIN { if (b == 0) print "nan"; else printf "%.2f", a / b }')"
    echo "RATIO dhcp_vs_dnsmasq=$(awk -v a="$us" -v b="$dm" 'BEGIN { if (b == 0) print "nan"; else printf "%.2f", a / b }')"
} | tee "$RESULTS"
