#!/usr/bin/env bash
# Failover benchmark (run by `make bench`, as root): understudy against keepalived (VRRP)
# in the same namespace topology, one after the other:
#   primary (p) and standby (s) on a public LAN bridge with a client (c) that is also the
#   gateway and understudy's tie-breaker; p and s share a private veth link as well (a
#   second heartbeat channel for understudy; keepalived, as usually set up, uses only the
#   public LAN). The VIP lives on the public LAN.
#  1. crash: link down + SIGKILL of the primary while the client pings the VIP every 5 ms
#     (`ping -i 0.005 -D`); outage = first reply after the kill - the kill; TRIALS trials
#     each for understudy at its defaults (50 ms interval, 200 ms dead time growing with
#     measured jitter, real-time heartbeat thread), keepalived at its defaults (VRRPv2,
#     advert_int 1) and at advert_int 0.1 (VRRPv3); p50, p99.
#  2. planned switchover (understudy): `understudy failover takeover` on the standby, and
#     SIGTERM of the primary (keepalived's SIGTERM too: it sends a priority-0 advert);
#     gap = the longest silence between two replies.
#  3. false takeovers under 20% and 50% loss of the heartbeats on one channel (understudy:
#     the private channel; keepalived: its VRRP adverts), all six runs at once in their own
#     topologies for LOSS_SECS, then extrapolated to one hour. Meanwhile every 5-15 s all
#     six pairs' daemons are stopped together for 0.2-0.6 s (SIGSTOP/SIGCONT), the stalls
#     a shared VM gives every process; nobody crashes, so every takeover is false.
# UNDERSTUDY_BENCH_FAILOVER_EXTRA: lines added to understudy's [failover] (to measure one
# lever at a time, e.g. 'realtime = false' or 'dead_time_max = "200ms"').
set -euo pipefail
export LC_ALL=C
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BIN=$(realpath "${UNDERSTUDY_BIN:-$REPO/target/release/understudy}")
RESULTS=$REPO/benches/results/failover-latest.txt
TRIALS=${UNDERSTUDY_BENCH_FAILOVER_TRIALS:-20}
SWITCH_TRIALS=${UNDERSTUDY_BENCH_FAILOVER_SWITCH_TRIALS:-10}
LOSS_SECS=${UNDERSTUDY_BENCH_FAILOVER_LOSS_SECS:-600}
EXTRA=${UNDERSTUDY_BENCH_FAILOVER_EXTRA:-}
for t in keepalived nft ping python3; do command -v $t >/dev/null || { echo "bench: $t missing (make bench-deps)" >&2; exit 1; }; done

ID=$$
WORK=$(mktemp -d /var/tmp/us-bench-failover.XXXXXX)
TOPOS=()
LOSS_PIDS=()
declare -A PIDS=()
cleanup() {
    for k in "${!PIDS[@]}"; do kill -9 "${PIDS[$k]}" 2>/dev/null || true; done
    for f in "$WORK"/*/*.pid; do [ -f "$f" ] && kill -9 "$(cat "$f")" 2>/dev/null || true; done
    wait 2>/dev/null || true
    for t in "${TOPOS[@]}"; do for r in p s c b; do ip netns del "fob$ID-$t-$r" 2>/dev/null || true; done; done
    rm -rf "$WORK"
}
trap cleanup EXIT INT TERM
log() { printf '[failover-bench %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
now() { date +%s.%N; }

# ---------------------------------------------------------------- topology

# topo T N: namespaces fob$ID-T-{p,s,c,b}; public LAN 10.N.1.0/24 (p .1, s .2, c .100,
# VIP .10) on a bridge in b; private link 10.N.2.0/24 between p and s.
topo() {
    local t=$1 n=$2 b="fob$ID-$1-b"
    TOPOS+=("$t")
    for r in p s c b; do ip netns add "fob$ID-$t-$r"; ip -n "fob$ID-$t-$r" link set lo up; done
    ip -n "$b" link add name lan0 type bridge
    ip -n "$b" link set lan0 up
    for r in p:1 s:2 c:100; do
        local ns="fob$ID-$t-${r%:*}"
        ip -n "$ns" link add pub type veth peer name "b${r%:*}" netns "$b"
        ip -n "$b" link set "b${r%:*}" master lan0
        ip -n "$b" link set "b${r%:*}" up
        ip -n "$ns" addr add "10.$n.1.${r#*:}/24" dev pub
        ip -n "$ns" link set pub up
    done
    ip -n "fob$ID-$t-p" link add priv type veth peer name priv netns "fob$ID-$t-s"
    ip -n "fob$ID-$t-p" addr add "10.$n.2.1/24" dev priv
    ip -n "fob$ID-$t-s" addr add "10.$n.2.2/24" dev priv
    ip -n "fob$ID-$t-p" link set priv up
    ip -n "fob$ID-$t-s" link set priv up
}
ns() { echo "fob$ID-$1-$2"; }
has_vip() { ip -n "$(ns "$1" "$2")" -br addr show dev pub | grep -q "10\.$3\.1\.10/"; }
drop_vips() {
    for r in p s; do ip -n "$(ns "$1" $r)" addr del "10.$2.1.10/24" dev pub 2>/dev/null || true; done
    ip -n "$(ns "$1" c)" neigh flush all
}
links() { local i; for i in pub priv; do ip -n "$(ns "$1" p)" link set "$i" "$2"; done; }
# wait_for SECONDS CMD...: poll every 20 ms
wait_for() {
    local end=$(($(date +%s%N) + $1 * 1000000000)); shift
    until "$@"; do
        [ "$(date +%s%N)" -lt "$end" ] || return 1
        sleep 0.02
    done
}

# ---------------------------------------------------------------- the daemons

us_setup() { # T N: data dirs with one shared key
    local t=$1
    mkdir -p "$WORK/$t/p" "$WORK/$t/s"
    [ -f "$WORK/$t/p/failover.key" ] || {
        "$BIN" failover keygen "$WORK/$t/p/failover.key" >/dev/null
        cp "$WORK/$t/p/failover.key" "$WORK/$t/s/failover.key"
    }
}
us_start() { # T N ROLE
    local t=$1 n=$2 r=$3 me peer node role
    if [ "$r" = p ]; then me=1 peer=2 node=head-a role=primary; else me=2 peer=1 node=head-b role=standby; fi
    cat > "$WORK/$t/$r/c.toml" <<TOML
data_dir = "$WORK/$t/$r"
[failover]
node = "$node"
role = "$role"
tiebreaker = ["10.$n.1.100"]
$EXTRA
[[failover.channel]]
name = "private"
local = "10.$n.2.$me"
peer = "10.$n.2.$peer"
[[failover.channel]]
name = "public"
local = "10.$n.1.$me"
peer = "10.$n.1.$peer"
[[failover.vip]]
address = "10.$n.1.10/24"
interface = "pub"
TOML
    rm -f "$WORK/$t/$r/failover.status.json"
    RUST_LOG=info ip netns exec "$(ns "$t" "$r")" "$BIN" serve --config "$WORK/$t/$r/c.toml" >> "$WORK/$t/$r.log" 2>&1 &
    PIDS[$t-$r]=$!
    echo $! > "$WORK/$t/$r.pid"
}
us_ready() { # T N: the primary holds and the standby knows it
    has_vip "$1" p "$2" && grep -q '"holder": "head-a"' "$WORK/$1/s/failover.status.json" 2>/dev/null
}
ka_start() { # T N ROLE ADVERT
    local t=$1 n=$2 r=$3 adv=$4 state=BACKUP prio=100 v=""
    mkdir -p "$WORK/$t"
    [ "$r" = p ] && { state=MASTER; prio=150; }
    # VRRPv2 adverts are whole seconds; sub-second needs VRRPv3.
    [ "$adv" = 1 ] || v="vrrp_version 3"
    cat > "$WORK/$t/ka-$r.conf" <<CONF
global_defs {
    router_id $r$t
    $v
}
vrrp_instance VI {
    state $state
    interface pub
    virtual_router_id 51
    priority $prio
    advert_int $adv
    virtual_ipaddress {
        10.$n.1.10/24 dev pub
    }
}
CONF
    ip netns exec "$(ns "$t" "$r")" keepalived -n -l -D -P -f "$WORK/$t/ka-$r.conf" \
        -p "$WORK/$t/ka-$r.pid" -r "$WORK/$t/ka-$r-vrrp.pid" >> "$WORK/$t/ka-$r.log" 2>&1 &
    PIDS[$t-$r]=$!
}
ka_ready() { has_vip "$1" p "$2" && grep -q "Entering BACKUP STATE" "$WORK/$1/ka-s.log" 2>/dev/null; }
# The backup's master-down timer runs from its start until the first advert: let a few
# adverts arrive, so that a kill finds it in its steady state.
ka_settle() { sleep "$(awk -v a="$1" 'BEGIN { print 3 * a }')"; }
ka_kill9() { # T R: the parent and its VRRP child
    kill -9 "${PIDS[$1-$2]}" 2>/dev/null || true
    [ -f "$WORK/$1/ka-$2-vrrp.pid" ] && kill -9 "$(cat "$WORK/$1/ka-$2-vrrp.pid")" 2>/dev/null || true
    wait "${PIDS[$1-$2]}" 2>/dev/null || true
    unset "PIDS[$1-$2]"
    rm -f "$WORK/$1/ka-$2.pid" "$WORK/$1/ka-$2-vrrp.pid"
}
stop() { # T R: SIGTERM and wait (keepalived's child goes with its parent)
    kill "${PIDS[$1-$2]}" 2>/dev/null || true
    wait "${PIDS[$1-$2]}" 2>/dev/null || true
    unset "PIDS[$1-$2]"
    rm -f "$WORK/$1/$2.pid" "$WORK/$1/ka-$2.pid" "$WORK/$1/ka-$2-vrrp.pid"
}
kill9() {
    kill -9 "${PIDS[$1-$2]}" 2>/dev/null || true
    wait "${PIDS[$1-$2]}" 2>/dev/null || true
    unset "PIDS[$1-$2]"
    rm -f "$WORK/$1/$2.pid"
}

# ---------------------------------------------------------------- measuring

prober_start() { # T N: ping the VIP every 5 ms with receive timestamps
    ip netns exec "$(ns "$1" c)" ping -n -D -i 0.005 "10.$2.1.10" > "$WORK/ping.log" 2>&1 &
    PIDS[ping]=$!
}
prober_stop() { kill "${PIDS[ping]}" 2>/dev/null || true; wait "${PIDS[ping]}" 2>/dev/null || true; unset "PIDS[ping]"; }
replies() { grep -c 'bytes from' "$WORK/ping.log" 2>/dev/null || echo 0; }
reply_after() { # T0: a reply stamped after T0
    awk -v t0="$1" -F'[][]' '/bytes from/ && $2 > t0 { found = 1; exit } END { exit !found }' "$WORK/ping.log"
}
# outage T0 MODE: "first" = first reply after T0 minus T0; "gap" = longest silence between
# replies from T0 - 0.1 s on (the probe period is included in both).
outage() {
    awk -v t0="$1" -v mode="$2" -F'[][]' '
        !/bytes from/ { next }
        mode == "first" && $2 > t0 { printf "%.3f\n", $2 - t0; done = 1; exit }
        mode == "gap" && $2 >= t0 - 0.1 { if (last) { g = $2 - last; if (g > max) max = g }; last = $2 }
        END { if (mode == "gap" && last) printf "%.3f\n", max; else if (!done) print "nan" }' "$WORK/ping.log"
}
# stats FILE: "p50 p99 min max n" (nearest rank)
stats() {
    sort -g "$1" | awk '{ v[NR] = $1 } END {
        if (NR == 0) { print "nan nan nan nan 0"; exit }
        i50 = int(NR * 0.50 + 0.999999); i99 = int(NR * 0.99 + 0.999999)
        printf "%.3f %.3f %.3f %.3f %d\n", v[i50], v[i99], v[1], v[NR], NR }'
}
stall_count() { grep -c self_stall "$WORK/$1/s.log" 2>/dev/null || true; }
rand_sleep() { sleep "0.$(printf '%03d' $((RANDOM % 1000)))"; }

# crash_trials KIND OUTFILE [ADVERT]: KIND us|ka
crash_trials() {
    local kind=$1 out=$2 adv=${3:-1} t=crash n=61 i
    : > "$out"
    for i in $(seq 1 "$TRIALS"); do
        drop_vips $t $n; links $t up
        if [ "$kind" = us ]; then
            us_setup $t; us_start $t $n p; us_start $t $n s
            wait_for 15 us_ready $t $n || { log "  trial $i: understudy did not settle"; tail -5 "$WORK/$t/s.log" >&2; exit 1; }
        else
            ka_start $t $n p "$adv"; ka_start $t $n s "$adv"
            wait_for 20 ka_ready $t $n || { log "  trial $i: keepalived did not settle"; tail -5 "$WORK/$t/ka-s.log" >&2; exit 1; }
            ka_settle "$adv"
        fi
        prober_start $t $n
        wait_for 10 bash -c "[ \$(grep -c 'bytes from' '$WORK/ping.log') -ge 20 ]" || { log "  trial $i: VIP not answering"; exit 1; }
        local stalls0; stalls0=$(stall_count $t)
        rand_sleep
        # The standby's dead time just before the crash (it grows after irregular heartbeats).
        local dead=""
        [ "$kind" = us ] && dead=" (dead time $(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["dead_time_ms"])' "$WORK/$t/s/failover.status.json" 2>/dev/null) ms)"
        links $t down
        if [ "$kind" = us ]; then kill9 $t p; else ka_kill9 $t p; fi
        # Taken once the links are down: no reply stamped later can come from the primary.
        local t0; t0=$(now)
        wait_for 30 reply_after "$t0" || log "  trial $i: no reply within 30 s"
        prober_stop
        outage "$t0" first >> "$out"
        log "  $kind ${adv}s trial $i: outage $(tail -1 "$out") s$dead"
        if [ "$kind" = us ]; then
            # Whether the standby's loop saw a stall of its own during the trial (the
            # machine paused it): such a stall is not counted as silence.
            if [ "$(stall_count $t)" != "$stalls0" ]; then echo 1; else echo 0; fi >> "$out.stalls"
        fi
        stop $t s
    done
    drop_vips $t $n; links $t up
}

# switch_trials HOW OUTFILE: HOW takeover (CLI on the standby) | sigterm (primary) | ka-sigterm
switch_trials() {
    local how=$1 out=$2 t=crash n=61 i
    : > "$out"
    for i in $(seq 1 "$SWITCH_TRIALS"); do
        drop_vips $t $n; links $t up
        if [ "$how" = ka-sigterm ]; then
            ka_start $t $n p 1; ka_start $t $n s 1
            wait_for 20 ka_ready $t $n || { log "keepalived did not settle"; exit 1; }
            ka_settle 1
        else
            us_setup $t; us_start $t $n p; us_start $t $n s
            wait_for 15 us_ready $t $n || { log "understudy did not settle"; exit 1; }
        fi
        prober_start $t $n
        wait_for 10 bash -c "[ \$(grep -c 'bytes from' '$WORK/ping.log') -ge 20 ]" || { log "VIP not answering"; exit 1; }
        rand_sleep
        local t0; t0=$(now)
        case $how in
            takeover) "$BIN" --data-dir "$WORK/$t/s" failover takeover >/dev/null ;;
            sigterm | ka-sigterm) stop $t p ;;
        esac
        wait_for 10 has_vip $t s $n || log "  trial $i: the VIP did not move"
        sleep 1
        prober_stop
        outage "$t0" gap >> "$out"
        log "  $how trial $i: gap $(tail -1 "$out") s"
        [ "$how" = takeover ] && stop $t p
        stop $t s
    done
    drop_vips $t $n
}

# loss_run KIND T N PCT [ADVERT]: LOSS_SECS with PCT% of one channel's heartbeats dropped
# both ways; prints the standby's takeovers (the primary never dies, so each is false).
loss_run() {
    local kind=$1 t=$2 n=$3 pct=$4 adv=${5:-1} rule
    if [ "$kind" = us ]; then
        rule="iifname \"priv\" udp dport 694 numgen random mod 100 < $pct drop"
        us_setup "$t"; us_start "$t" "$n" p; us_start "$t" "$n" s
        wait_for 15 us_ready "$t" "$n" || { echo "nan"; return; }
    else
        rule="iifname \"pub\" ip protocol vrrp numgen random mod 100 < $pct drop"
        ka_start "$t" "$n" p "$adv"; ka_start "$t" "$n" s "$adv"
        wait_for 20 ka_ready "$t" "$n" || { echo "nan"; return; }
    fi
    for r in p s; do
        printf 'table inet loss {\n chain in {\n  type filter hook input priority 0;\n  %s\n }\n}\n' "$rule" |
            ip netns exec "$(ns "$t" $r)" nft -f -
    done
    sleep "$LOSS_SECS"
    if [ "$kind" = us ]; then
        # Takeovers by the standby, plus the primary's beyond its cold start (a flap back).
        python3 -c 'import json,sys
s, p = (json.load(open(f))["counters"]["takeovers"] for f in sys.argv[1:])
print(s + max(p - 1, 0))' "$WORK/$t/s/failover.status.json" "$WORK/$t/p/failover.status.json"
    else
        grep -c "Entering MASTER STATE" "$WORK/$t/ka-s.log" || true
    fi
    stop "$t" s; stop "$t" p
}

# staller: until $WORK/stall.stop exists, stop every daemon of the loss runs at once for
# 0.2-0.6 s, every 5-15 s; counts the stalls in $WORK/stalls.
staller() {
    : > "$WORK/stalls"
    sleep 20 # every pair settled
    while [ ! -f "$WORK/stall.stop" ]; do
        sleep "$((5 + RANDOM % 11))"
        local pids; pids=$(cat "$WORK"/l*/*.pid 2>/dev/null | tr '\n' ' ')
        [ -n "$pids" ] || continue
        # shellcheck disable=SC2086
        kill -STOP $pids 2>/dev/null || true
        sleep "0.$((2 + RANDOM % 5))"
        # shellcheck disable=SC2086
        kill -CONT $pids 2>/dev/null || true
        echo stall >> "$WORK/stalls"
    done
}

# ---------------------------------------------------------------- run

topo crash 61
log "crash trials: understudy ($TRIALS)"
crash_trials us "$WORK/us-crash.txt"
log "crash trials: keepalived advert_int 0.1 ($TRIALS)"
crash_trials ka "$WORK/ka01-crash.txt" 0.1
log "crash trials: keepalived defaults, advert_int 1 ($TRIALS)"
crash_trials ka "$WORK/ka1-crash.txt" 1
log "planned switchover: understudy takeover, SIGTERM; keepalived SIGTERM ($SWITCH_TRIALS each)"
switch_trials takeover "$WORK/us-switch.txt"
switch_trials sigterm "$WORK/us-stop.txt"
switch_trials ka-sigterm "$WORK/ka-stop.txt"

log "false takeovers: 6 runs of ${LOSS_SECS}s at once, with stalls of every daemon"
staller &
STALLER=$!
i=0
for cfg in "us 20" "us 50" "ka1 20" "ka1 50" "ka01 20" "ka01 50"; do
    set -- $cfg
    t="l$1-$2"; n=$((70 + i)); i=$((i + 1))
    topo "$t" "$n"
    case $1 in
        us) loss_run us "$t" "$n" "$2" > "$WORK/loss-$1-$2.txt" & ;;
        ka1) loss_run ka "$t" "$n" "$2" 1 > "$WORK/loss-$1-$2.txt" & ;;
        ka01) loss_run ka "$t" "$n" "$2" 0.1 > "$WORK/loss-$1-$2.txt" & ;;
    esac
    LOSS_PIDS+=($!)
done
wait "${LOSS_PIDS[@]}"
touch "$WORK/stall.stop"
wait "$STALLER" 2>/dev/null || true
STALLS=$(wc -l < "$WORK/stalls")

# ---------------------------------------------------------------- report

read -r us50 us99 usmin usmax usn < <(stats "$WORK/us-crash.txt")
paste -d' ' "$WORK/us-crash.txt" "$WORK/us-crash.txt.stalls" | awk '$2 == 0 { print $1 }' > "$WORK/us-crash-nostall.txt"
read -r un50 un99 unmin unmax unn < <(stats "$WORK/us-crash-nostall.txt")
read -r k150 k199 k1min k1max k1n < <(stats "$WORK/ka1-crash.txt")
read -r k050 k099 k0min k0max k0n < <(stats "$WORK/ka01-crash.txt")
read -r sw50 sw99 swmin swmax swn < <(stats "$WORK/us-switch.txt")
read -r st50 st99 stmin stmax stn < <(stats "$WORK/us-stop.txt")
read -r ks50 ks99 ksmin ksmax ksn < <(stats "$WORK/ka-stop.txt")
per_hour() { awk -v n="$(cat "$1")" -v s="$LOSS_SECS" 'BEGIN { if (n == "nan" || n == "") print "nan"; else printf "%.0f", n * 3600 / s }'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (a + 0 == 0 || a == "nan" || b == "nan") print "nan"; else printf "%.1f", b / a }'; }
{
    echo "understudy failover benchmark — $(date -Is) on $(nproc) cores; client pings the VIP every 5 ms"
    echo "crash = public+private link down, then SIGKILL of the primary; outage = from then to the first reply from the VIP (s)"
    printf '%-52s %8s %8s %8s %8s %4s\n' "crash outage" p50 p99 min max n
    printf '%-52s %8s %8s %8s %8s %4s\n' "understudy defaults (50ms interval, 200ms dead, 2 ch)" "$us50" "$us99" "$usmin" "$usmax" "$usn"
    printf '%-52s %8s %8s %8s %8s %4s\n' "  the same, trials without a self-stall logged" "$un50" "$un99" "$unmin" "$unmax" "$unn"
    printf '%-52s %8s %8s %8s %8s %4s\n' "keepalived $(keepalived --version 2>&1 | awk 'NR==1{print $2}') advert_int 0.1 (VRRPv3)" "$k050" "$k099" "$k0min" "$k0max" "$k0n"
    printf '%-52s %8s %8s %8s %8s %4s\n' "keepalived defaults (advert_int 1, VRRPv2)" "$k150" "$k199" "$k1min" "$k1max" "$k1n"
    echo "planned switchover: longest silence between replies (s)"
    printf '%-52s %8s %8s %8s %8s %4s\n' "understudy failover takeover (on the standby)" "$sw50" "$sw99" "$swmin" "$swmax" "$swn"
    printf '%-52s %8s %8s %8s %8s %4s\n' "understudy SIGTERM of the primary" "$st50" "$st99" "$stmin" "$stmax" "$stn"
    printf '%-52s %8s %8s %8s %8s %4s\n' "keepalived SIGTERM of the primary (advert_int 1)" "$ks50" "$ks99" "$ksmin" "$ksmax" "$ksn"
    [ -z "$EXTRA" ] || echo "understudy's [failover] had, besides its defaults: $EXTRA"
    echo "false takeovers with loss on one channel, both ways (${LOSS_SECS}s each, extrapolated to 1 h; nobody crashes)"
    echo "  and $STALLS stalls of every daemon at once (SIGSTOP 0.2-0.6 s, every 5-15 s)"
    printf '%-52s %10s %10s\n' "" "20% loss" "50% loss"
    printf '%-52s %10s %10s\n' "understudy (loss on the private channel of two)" "$(cat "$WORK/loss-us-20.txt") ($(per_hour "$WORK/loss-us-20.txt")/h)" "$(cat "$WORK/loss-us-50.txt") ($(per_hour "$WORK/loss-us-50.txt")/h)"
    printf '%-52s %10s %10s\n' "keepalived defaults (loss on its VRRP adverts)" "$(cat "$WORK/loss-ka1-20.txt") ($(per_hour "$WORK/loss-ka1-20.txt")/h)" "$(cat "$WORK/loss-ka1-50.txt") ($(per_hour "$WORK/loss-ka1-50.txt")/h)"
    printf '%-52s %10s %10s\n' "keepalived advert_int 0.1" "$(cat "$WORK/loss-ka01-20.txt") ($(per_hour "$WORK/loss-ka01-20.txt")/h)" "$(cat "$WORK/loss-ka01-50.txt") ($(per_hour "$WORK/loss-ka01-50.txt")/h)"
    echo "RATIO crash_p99_keepalived_defaults_vs_understudy=$(ratio "$us99" "$k199")"
    echo "RATIO crash_p99_keepalived_0.1_vs_understudy=$(ratio "$us99" "$k099")"
    echo "RATIO crash_p50_keepalived_0.1_vs_understudy=$(ratio "$us50" "$k050")"
    echo "GOAL crash p99 <= 0.30 s: $us99; planned switchover gap <= 0.1 s: p99 $sw99; false takeovers 0: $(cat "$WORK/loss-us-20.txt") / $(cat "$WORK/loss-us-50.txt")"
} | tee "$RESULTS"
