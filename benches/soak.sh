#!/usr/bin/env bash
# Soak (`make soak`, as root): everything at once against one primary for SOAK_SECS
# (default 600), then checks that nothing failed that should not, that memory and file
# descriptors stayed flat, and that the state the servers recorded matches what the
# clients saw.
#
# Topology (network namespaces, addresses exist only inside them):
#   p  primary: `serve` with HTTP (0.0.0.0:8080), DHCP and TFTP on its LAN link, [failover]
#   s  standby: `serve` with HTTP (0.0.0.0:8080) and [failover]
#   l  the clients: a veth to p's LAN (10.91.0.0/16), and the public bridge (10.92.1.0/24,
#      p .1, s .2, l .100 = tie-breaker, VIP .10); p and s also share a private veth
#      (10.92.2.0/24): two heartbeat channels.
# Load, all at once from l:
#   - perfdhcp: a DORA storm at SOAK_DHCP_RATE/s from SOAK_DHCP_CLIENTS simulated clients;
#   - SOAK_DEPLOYERS loops, each: a deployment created for its own node (the deployment
#     token reports progress), `understudy deploy --server` into its own directory (tmpfs,
#     or ext4 on a loop device), the tree compared with the image's source by `rsync -naHAXc`;
#   - TFTP downloads in a loop (atftp, tftp-hpa, curl in turn), each compared with cmp;
#   - API listing loops (images, nodes, deployments, events) with curl (not /leases: it is
#     not paged, and listing 20,000 leases holds one of the inventory's 4 connections for
#     seconds);
#   - a VIP probe (`GET /api/v1/failover` at the VIP every 0.25 s: whichever node holds it);
#   - a planned switchover every SOAK_SWITCH_EVERY s: `understudy failover takeover` on the
#     node that does not hold the VIP, alternately.
# Every SOAK_SAMPLE s the two `serve` processes' VmRSS and open fds are sampled.
set -euo pipefail
export LC_ALL=C
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BIN=$(realpath "${UNDERSTUDY_BIN:-$REPO/target/release/understudy}")
SECS=${SOAK_SECS:-600}
DEPLOYERS=${SOAK_DEPLOYERS:-20}
SWITCH_EVERY=${SOAK_SWITCH_EVERY:-5}
DHCP_RATE=${SOAK_DHCP_RATE:-200}
DHCP_CLIENTS=${SOAK_DHCP_CLIENTS:-20000}
SAMPLE=${SOAK_SAMPLE:-10}
# Drain: how long the loops may take to finish what they started once SECS are over.
DRAIN=${SOAK_DRAIN:-300}
if [ "$SECS" -ge 600 ]; then DEFAULT_RESULTS=$REPO/benches/results/soak-latest.txt; else DEFAULT_RESULTS=$REPO/target/soak-short.txt; fi
RESULTS=${SOAK_RESULTS:-$DEFAULT_RESULTS}
# Flat after warm-up: the samples after WARMUP s are split into thirds; the last third's
# maximum may exceed the first third's by at most RSS_BOUND_PCT % + RSS_BOUND_MIB MiB
# (RSS), or FD_BOUND fds.
WARMUP=${SOAK_WARMUP:-$((SECS / 5 > 60 ? 60 : SECS / 5))}
RSS_BOUND_PCT=${SOAK_RSS_BOUND_PCT:-10}
RSS_BOUND_MIB=${SOAK_RSS_BOUND_MIB:-16}
FD_BOUND=${SOAK_FD_BOUND:-64}
DHCP_DROP_BOUND=${SOAK_DHCP_DROP_BOUND:-1}
# The deploy clients and their rsync checks stand for other machines: they run this much
# nicer than the servers, so that 20 of them do not take the servers' CPU away on 2 cores.
CLIENT_NICE=${SOAK_CLIENT_NICE:-10}
for t in perfdhcp atftp tftp curl jq rsync mkfs.ext4 losetup sqlite3; do
    command -v $t >/dev/null || { echo "soak: $t missing (make bench-deps)" >&2; exit 1; }
done
[[ -x $BIN ]] || { echo "soak: build first: cargo build --release" >&2; exit 1; }

ID=$$
P=usk$ID-p S=usk$ID-s L=usk$ID-l
VIP=10.92.1.10
WORK=$(mktemp -d /var/tmp/us-soak.XXXXXX)
JOBS=() LOOP= MNT=$WORK/mnt
cleanup() {
    set +e
    for j in "${JOBS[@]}"; do kill -TERM -- "-$j" 2>/dev/null; done
    for n in "$P" "$S" "$L"; do
        # What still runs inside our namespaces is ours (serve, clients).
        for pid in $(ip netns pids "$n" 2>/dev/null); do kill -9 "$pid" 2>/dev/null; done
    done
    wait 2>/dev/null
    mountpoint -q "$MNT" && umount "$MNT"
    [ -n "$LOOP" ] && losetup -d "$LOOP" 2>/dev/null
    for n in "$P" "$S" "$L"; do ip netns del "$n" 2>/dev/null; done
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
# Background jobs get process groups of their own, so cleanup ends each with its children.
set -m
log() { printf '[soak %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() { log "FAIL: $*"; exit 1; }
now() { date +%s.%N; }
# wait_for SECONDS CMD...: poll every 0.1 s
wait_for() {
    local end=$(($(date +%s) + $1)); shift
    until "$@"; do [ "$(date +%s)" -lt "$end" ] || return 1; sleep 0.1; done
}
in_l() { ip netns exec "$L" "$@"; }

# ---------------------------------------------------------------- topology
for n in "$P" "$S" "$L"; do ip netns add "$n"; ip -n "$n" link set lo up; done
ip -n "$P" link add lan type veth peer name lan netns "$L"
ip -n "$P" addr add 10.91.0.1/16 dev lan
ip -n "$L" addr add 10.91.0.2/16 dev lan
ip -n "$L" link add name br0 type bridge
ip -n "$L" addr add 10.92.1.100/24 dev br0
for r in p:1:"$P" s:2:"$S"; do
    IFS=: read -r name host ns <<<"$r"
    ip -n "$ns" link add pub type veth peer name "b$name" netns "$L"
    ip -n "$L" link set "b$name" master br0
    ip -n "$L" link set "b$name" up
    ip -n "$ns" addr add "10.92.1.$host/24" dev pub
    ip -n "$ns" link set pub up
done
ip -n "$P" link add priv type veth peer name priv netns "$S"
ip -n "$P" addr add 10.92.2.1/24 dev priv
ip -n "$S" addr add 10.92.2.2/24 dev priv
for l in "$P:lan" "$P:priv" "$S:priv" "$L:lan" "$L:br0"; do ip -n "${l%:*}" link set "${l#*:}" up; done

# ---------------------------------------------------------------- the image and data dirs
SRC=${SOAK_SRC:-}
if [ -z "$SRC" ]; then
    # A frozen copy, so that packages installed meanwhile do not change what deploys are
    # compared with.
    SRC=$WORK/src
    mkdir -p "$SRC"
    for d in doc perl zoneinfo i18n; do [ -d "/usr/share/$d" ] && cp -a "/usr/share/$d" "$SRC/"; done
fi
SRC_BYTES=$(du -sb --apparent-size "$SRC" | cut -f1)
SRC_ENTRIES=$(find "$SRC" | wc -l)
mkdir -p "$WORK/p" "$WORK/s" "$WORK/tftp" "$WORK/res" "$WORK/runs"
: >"$WORK/res/switches"
"$BIN" failover keygen "$WORK/p/failover.key" >/dev/null
cp "$WORK/p/failover.key" "$WORK/s/failover.key"
# One admin token for both nodes, so the VIP probe is answered by whichever holds it.
TOKEN=$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')
for n in p s; do (umask 077; echo "$TOKEN" >"$WORK/$n/admin.token"); done
log "capturing $SRC ($((SRC_BYTES / 1000000)) MB, $SRC_ENTRIES entries)"
"$BIN" --data-dir "$WORK/p" capture --name soak -q "$SRC" >/dev/null
for f in small:65536 mid:1048576 big:4194304; do head -c "${f#*:}" /dev/urandom >"$WORK/tftp/${f%:*}"; done
chmod 755 "$WORK" "$WORK/tftp"; chmod 644 "$WORK/tftp/"*

# The deploy targets stand for the nodes' own disks: tmpfs by default, so that the
# clients' writes do not queue the server's sqlite fsyncs behind them on this machine's one
# disk (on a real network they land on other machines); SOAK_TARGET=ext4 puts them on an
# ext4 on a loop device instead.
mkdir -p "$MNT"
if [ "${SOAK_TARGET:-tmpfs}" = ext4 ]; then
    FS_BYTES=$(((SRC_BYTES * DEPLOYERS * 3 / 2 >> 20 << 20) + (1 << 30)))
    truncate -s "$FS_BYTES" "$WORK/deploy.img"
    LOOP=$(losetup -f --show "$WORK/deploy.img")
    mkfs.ext4 -q -F "$LOOP"
    mount "$LOOP" "$MNT"
else
    mount -t tmpfs -o size=$(((SRC_BYTES * DEPLOYERS * 5 / 4 >> 20) + 256))m soak "$MNT"
fi

failover_toml() { # NODE ROLE ME PEER
    cat <<TOML
[failover]
node = "$1"
role = "$2"
tiebreaker = ["10.92.1.100"]
[[failover.channel]]
name = "private"
local = "10.92.2.$3"
peer = "10.92.2.$4"
[[failover.channel]]
name = "public"
local = "10.92.1.$3"
peer = "10.92.1.$4"
[[failover.vip]]
address = "$VIP/24"
interface = "pub"
TOML
}
{
    cat <<TOML
data_dir = "$WORK/p"
[http]
listen = "0.0.0.0:8080"
[tftp]
listen = "10.91.0.1:69"
root = "$WORK/tftp"
[dhcp]
interface = "lan"
server_ip = "10.91.0.1"
subnet = "10.91.0.0/16"
range = "10.91.1.0-10.91.254.254"
lease_time = "1h"
per_mac_rate = 1000
TOML
    failover_toml head-a primary 1 2
} >"$WORK/p.toml"
{
    printf 'data_dir = "%s"\n[http]\nlisten = "0.0.0.0:8080"\n' "$WORK/s"
    failover_toml head-b standby 2 1
} >"$WORK/s.toml"

RUST_LOG=${RUST_LOG:-info} ip netns exec "$P" "$BIN" serve --config "$WORK/p.toml" >"$WORK/p.log" 2>&1 &
PID_P=$!
JOBS+=("$PID_P")
RUST_LOG=${RUST_LOG:-info} ip netns exec "$S" "$BIN" serve --config "$WORK/s.toml" >"$WORK/s.log" 2>&1 &
PID_S=$!
JOBS+=("$PID_S")

api() { # NODE_ADDR METHOD PATH [BODY]: the body on stdout, fails on a non-2xx answer
    local a=$1 m=$2 p=$3
    shift 3
    in_l curl -sSf --max-time 20 -X "$m" -H "Authorization: Bearer $TOKEN" -H 'Content-Type: application/json' \
        ${1:+--data "$1"} "http://$a:8080/api/v1$p"
}
has_vip() { ip -n "$1" -br addr show dev pub | grep -q "$VIP/"; }
holder() { if has_vip "$P"; then echo p; elif has_vip "$S"; then echo s; else echo none; fi; }
settled() { # the primary holds and the standby knows it
    has_vip "$P" && ! has_vip "$S" && grep -q '"holder": "head-a"' "$WORK/s/failover.status.json" 2>/dev/null
}
wait_for 30 api 10.91.0.1 GET /whoami >/dev/null 2>&1 || { tail -20 "$WORK/p.log" >&2; die "primary's API did not come up"; }
wait_for 30 api 10.92.1.2 GET /whoami >/dev/null 2>&1 || { tail -20 "$WORK/s.log" >&2; die "standby's API did not come up"; }
wait_for 30 settled || { tail -20 "$WORK/s.log" >&2; die "failover did not settle (primary holding)"; }
for i in $(seq "$DEPLOYERS"); do
    api 10.91.0.1 POST /nodes "{\"name\": \"soak-$i\", \"role\": \"compute\", \"image\": \"soak\"}" >/dev/null ||
        die "could not add node soak-$i"
done
sleep 1
T_START=$(now)
START_ISO=$(date -u -d "@${T_START%.*}" +%Y-%m-%dT%H:%M:%SZ)
DEADLINE=$(( ${T_START%.*} + SECS ))
running() { [ "$(date +%s)" -lt "$DEADLINE" ]; }
log "soak for ${SECS}s: perfdhcp ${DHCP_RATE}/s, $DEPLOYERS deploy loops, TFTP, API and VIP loops, a switchover every ${SWITCH_EVERY}s"

# ---------------------------------------------------------------- load
# Each loop appends one line per request to its own file in res/: EPOCH KIND ok|fail DETAIL.
record() { printf '%s %s %s %s\n' "$(now)" "$2" "$3" "${4:-}" >>"$WORK/res/$1"; }

# A request counts as lost when its answer takes longer than 4 s, a real client's first
# retransmission (RFC 2131 4.1; perfdhcp's own default is 1 s).
in_l perfdhcp -4 -l lan -r "$DHCP_RATE" -R "$DHCP_CLIENTS" -p "$SECS" -d 4 -x l >"$WORK/perfdhcp.out" 2>&1 &
PID_DHCP=$!
JOBS+=("$PID_DHCP")

deployer() { # I
    local i=$1 n=0 body id tok dir rc diff t0
    while running; do
        n=$((n + 1))
        dir=$MNT/d$i
        rm -rf "$dir"
        if ! body=$(api 10.91.0.1 POST /deployments "{\"node\": \"soak-$i\"}"); then
            record "deploy-$i" deploy fail "create-deployment"
            sleep 1
            continue
        fi
        id=$(jq -r .deployment.id <<<"$body") tok=$(jq -r .token <<<"$body")
        t0=$(now)
        rc=0
        in_l nice -n "$CLIENT_NICE" "$BIN" -q --server http://10.91.0.1:8080 --token "$tok" deploy soak "$dir" >"$WORK/runs/deploy-$i.$n.out" 2>&1 || rc=$?
        if [ "$rc" -ne 0 ]; then
            record "deploy-$i" deploy fail "id=$id rc=$rc $(tail -1 "$WORK/runs/deploy-$i.$n.out")"
            continue
        fi
        diff=$(nice -n "$CLIENT_NICE" rsync -naHAXc --numeric-ids --delete -i "$SRC/" "$dir/" | wc -l)
        if [ "$diff" -ne 0 ]; then
            rsync -naHAXc --numeric-ids --delete -i "$SRC/" "$dir/" | head -20 >"$WORK/runs/deploy-$i.$n.diff"
            record "deploy-$i" deploy fail "id=$id differs=$diff"
        else
            record "deploy-$i" deploy ok "id=$id secs=$(awk -v a="$t0" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }')"
            rm -f "$WORK/runs/deploy-$i.$n.out"
        fi
    done
}
for i in $(seq "$DEPLOYERS"); do
    deployer "$i" &
    JOBS+=("$!")
done

tftp_loop() {
    local n=0 f out=$WORK/tftp-out client
    while running; do
        n=$((n + 1))
        for f in small mid big; do
            rm -f "$out"
            case $((n % 3)) in
                0) client=atftp; in_l atftp --option "blksize 1468" --option "windowsize 8" -g -r "$f" -l "$out" 10.91.0.1 >/dev/null 2>&1 || true ;;
                1) client=tftp-hpa; (cd "$WORK" && in_l tftp -m binary 10.91.0.1 -c get "$f" tftp-out >/dev/null 2>&1) || true ;;
                2) client=curl; in_l curl -sS --max-time 30 --tftp-blksize 1468 -o "$out" "tftp://10.91.0.1/$f" 2>/dev/null || true ;;
            esac
            if cmp -s "$out" "$WORK/tftp/$f"; then record tftp tftp ok "$client $f"; else record tftp tftp fail "$client $f"; fi
        done
        sleep 0.2
    done
}
tftp_loop &
JOBS+=("$!")

api_loop() { # K
    local path body
    while running; do
        for path in /images /nodes "/deployments?limit=100" "/events?limit=200"; do
            if body=$(api 10.91.0.1 GET "$path") && jq -e '.items | type == "array"' <<<"$body" >/dev/null 2>&1; then
                record "api-$1" api ok "$path"
            else
                record "api-$1" api fail "$path"
            fi
        done
    done
}
for k in 1 2; do
    api_loop $k &
    JOBS+=("$!")
done

vip_loop() {
    local body
    while running; do
        if body=$(in_l curl -sSf --max-time 2 -H "Authorization: Bearer $TOKEN" "http://$VIP:8080/api/v1/failover" 2>/dev/null); then
            record vip vip ok "$(jq -r .node <<<"$body")"
        else
            record vip vip fail ""
        fi
        sleep 0.25
    done
}
vip_loop &
JOBS+=("$!")

ns_of() { if [ "$1" = p ]; then echo "$P"; else echo "$S"; fi; }
moved() { has_vip "$(ns_of "$1")" && ! has_vip "$(ns_of "$2")"; }
switch_loop() {
    local from to t0 rc
    while sleep "$SWITCH_EVERY" && running; do
        from=$(holder)
        case $from in p) to=s ;; s) to=p ;; *) record switch switch fail "nobody holds the VIP"; continue ;; esac
        t0=$(now)
        rc=0
        "$BIN" --data-dir "$WORK/$to" failover takeover >"$WORK/runs/switch.out" 2>&1 || rc=$?
        if [ "$rc" -eq 0 ] && wait_for 10 moved "$to" "$from"; then
            printf '%s %s %s %s\n' "$t0" "$(now)" "$from" "$to" >>"$WORK/res/switches"
            record switch switch ok "$from->$to"
        else
            record switch switch fail "$from->$to rc=$rc $(tail -1 "$WORK/runs/switch.out")"
        fi
    done
}
switch_loop &
JOBS+=("$!")

sample() { # PID: "rss_kib fds cpu_ticks"
    echo "$(awk '/^VmRSS/ { print $2 }' "/proc/$1/status" 2>/dev/null || echo 0) $(ls "/proc/$1/fd" 2>/dev/null | wc -l)" \
        "$(awk '{ sub(/^.*\) /, ""); print $12 + $13 }' "/proc/$1/stat" 2>/dev/null || echo 0)"
}
sampler() {
    while running; do
        printf '%s %s %s\n' "$(awk -v a="$T_START" -v b="$(now)" 'BEGIN { printf "%.0f", b - a }')" "$(sample "$PID_P")" "$(sample "$PID_S")" >>"$WORK/res/samples"
        sleep "$SAMPLE"
    done
}
sampler &
JOBS+=("$!")

# ---------------------------------------------------------------- wait, then drain
while running; do
    sleep 5
    kill -0 "$PID_P" 2>/dev/null || die "the primary exited: $(tail -3 "$WORK/p.log")"
    kill -0 "$PID_S" 2>/dev/null || die "the standby exited: $(tail -3 "$WORK/s.log")"
done
log "time is up; waiting up to ${DRAIN}s for the loops to finish what they started"
drain_end=$(($(date +%s) + DRAIN))
for j in "${JOBS[@]}"; do
    [ "$j" = "$PID_P" ] || [ "$j" = "$PID_S" ] && continue
    while kill -0 "$j" 2>/dev/null && [ "$(date +%s)" -lt "$drain_end" ]; do sleep 1; done
done
STUCK=0
for j in "${JOBS[@]}"; do
    [ "$j" = "$PID_P" ] || [ "$j" = "$PID_S" ] && continue
    if kill -0 "$j" 2>/dev/null; then STUCK=$((STUCK + 1)); kill -TERM -- "-$j" 2>/dev/null || true; fi
done
T_END=$(now)
ip netns exec "$P" cat /proc/net/snmp | awk '/^Udp:/ { if (!h) { for (i = 2; i <= NF; i++) k[i] = $i; h = 1 } else for (i = 2; i <= NF; i++) printf "%s=%s ", k[i], $i }' >"$WORK/udp.counters"
# The final samples, once the load is gone.
printf '%s %s %s\n' "$(awk -v a="$T_START" -v b="$T_END" 'BEGIN { printf "%.0f", b - a }')" "$(sample "$PID_P")" "$(sample "$PID_S")" >"$WORK/res/samples.after"

# ---------------------------------------------------------------- checks
# Every check runs and prints, whatever an earlier one found.
set +e +o pipefail
FAILED=()
check() { # NAME OK(0/1) DETAIL
    if [ "$2" -eq 0 ]; then printf '  [ok]   %-28s %s\n' "$1" "$3"; else printf '  [FAIL] %-28s %s\n' "$1" "$3"; FAILED+=("$1"); fi
}
count() { cat "$WORK"/res/$1 2>/dev/null | awk -v s="$2" '$3 == s' | wc -l; }
SWITCHES=$(wc -l <"$WORK/res/switches" 2>/dev/null || echo 0)
REPORT=$WORK/report.txt
{
echo "understudy soak — $(date -Is) on $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg)"
echo "$SECS s: perfdhcp ${DHCP_RATE}/s from $DHCP_CLIENTS clients; $DEPLOYERS deploy loops of $((SRC_BYTES / 1000000)) MB / $SRC_ENTRIES entries ($SRC);"
echo "  TFTP (atftp/tftp-hpa/curl, 64 KiB-4 MiB); 2 API listing loops; a VIP probe every 0.25 s; a switchover every ${SWITCH_EVERY}s"
echo "requests (ok / failed):"
for k in deploy tftp api switch vip; do
    printf '  %-8s %7d / %d\n' "$k" "$(count "$k*" ok)" "$(count "$k*" fail)"
done
echo "checks:"

# Deploys: every loop's every run succeeded and equals the source; the server recorded
# each as done, with its event.
d_ok=$(count 'deploy-*' ok) d_fail=$(count 'deploy-*' fail)
check "deploys identical" $(( d_fail > 0 || d_ok == 0 )) "$d_ok deploys equal to the image under rsync -naHAXc, $d_fail failed"
[ "$d_fail" -eq 0 ] || grep -h ' fail ' "$WORK"/res/deploy-* | head -5 | sed 's/^/           /'
ids=$(cat "$WORK"/res/deploy-* 2>/dev/null | awk '$3 == "ok" { sub("id=", "", $4); print $4 }')
deps=$(api 10.91.0.1 GET "/deployments?limit=1000" | jq -r '.items[] | "\(.id) \(.status)"')
# Deployed ids against the server's list: not done, or not listed at all.
read -r not_done missing <<<"$(awk -v d="$deps" 'BEGIN { n = split(d, l, "\n"); for (i = 1; i <= n; i++) { split(l[i], x, " "); st[x[1]] = x[2] } }
    NF { if (!($1 in st)) m++; else if (st[$1] != "done") nd++ } END { print nd + 0, m + 0 }' <<<"$ids")"
check "deployments recorded done" $(( not_done + missing > 0 )) "$(echo "$ids" | grep -c .) deployed, $not_done not done, $missing missing (GET /deployments)"
events() { # ADDR KIND: every event's "kind message" since the start, paged
    local off=0 page
    while :; do
        page=$(api "$1" GET "/events?kind=$2&since=$START_ISO&limit=1000&offset=$off") || return 1
        jq -r '.items[] | "\(.kind) \(.message)"' <<<"$page"
        [ "$(jq '.items | length' <<<"$page")" -eq 1000 ] || break
        off=$((off + 1000))
    done
}
done_ev=$(events 10.91.0.1 deploy.done | sed -n 's/^deploy.done deployment \([0-9]*\):.*/\1/p')
ev_missing=$(awk -v d="$done_ev" 'BEGIN { n = split(d, l, "\n"); for (i = 1; i <= n; i++) seen[l[i]] = 1 } NF && !($1 in seen) { m++ } END { print m + 0 }' <<<"$ids")
check "deploy.done events" $(( ev_missing > 0 )) "$ev_missing of the deployed ids without a deploy.done event"

t_fail=$(count tftp fail) t_ok=$(count tftp ok)
check "TFTP downloads" $(( t_fail > 0 || t_ok == 0 )) "$t_ok identical to the served file, $t_fail failed"
a_fail=$(count 'api-*' fail) a_ok=$(count 'api-*' ok)
check "API listings" $(( a_fail > 0 || a_ok == 0 )) "$a_ok answered 200 with a list, $a_fail failed"
s_fail=$(count switch fail)
check "switchovers" $(( s_fail > 0 || SWITCHES == 0 )) "$SWITCHES planned switchovers, the VIP moved each time; $s_fail failed"
# The VIP probe may fail only while the VIP moves: from a switchover's request to 2 s
# after the VIP was seen on the other node.
v_out=$(awk -v sw="$WORK/res/switches" 'BEGIN { while ((getline l < sw) > 0) { split(l, x, " "); a[++n] = x[1]; b[n] = x[2] + 2 } }
    $3 == "fail" { inside = 0; for (i = 1; i <= n; i++) if ($1 >= a[i] && $1 <= b[i]) inside = 1; if (!inside) out++ }
    END { print out + 0 }' "$WORK/res/vip" 2>/dev/null || echo "?")
v_ok=$(count vip ok)
check "VIP probe" $(( v_out != 0 || v_ok == 0 )) "$v_ok answered, $(count vip fail) failed, $v_out of them outside a switchover"

# DHCP: perfdhcp's drops, and what its clients were given against the lease table.
drops() { awk -v s="$1" '$0 ~ "Statistics for: " s { f = 1 } f && /^drops ratio/ { print $3 + 0; exit }' "$WORK/perfdhcp.out"; }
do_drops=$(drops DISCOVER-OFFER) ra_drops=$(drops REQUEST-ACK)
acks=$(awk '/Statistics for: REQUEST-ACK/ { f = 1 } f && /^received packets/ { print $3; exit }' "$WORK/perfdhcp.out")
check "DHCP drops" $(awk -v a="${do_drops:-100}" -v b="${ra_drops:-100}" -v m="$DHCP_DROP_BOUND" 'BEGIN { print !(a < m && b < m) }') \
    "${acks:-0} ACKs; drops DISCOVER-OFFER ${do_drops:-?}%, REQUEST-ACK ${ra_drops:-?}% (bound < ${DHCP_DROP_BOUND}%)"
echo "           the primary's UDP counters: $(cat "$WORK/udp.counters")"
# The lease table: every address perfdhcp's clients were ACKed is bound to the MAC it
# was given (its last ACK), and no address was ACKed to two MACs.
# `-x l` lists each exchange's lease as "client-id,address,": the client id is 01 and the MAC.
awk '/^\*\*\*Leases for REQUEST-ACK/ { f = 1; next } /^\*\*\*/ { f = 0 }
    f && /^(01[0-9a-f]+)?,[0-9.]+,/ { split($0, x, ","); print (x[1] == "" ? "-" : substr(x[1], 3)), x[2] }' "$WORK/perfdhcp.out" >"$WORK/acked"
sqlite3 -separator ' ' "$WORK/p/understudy.db" "SELECT ip, lower(replace(mac, ':', '')), state FROM leases" >"$WORK/leases"
read -r acked_n two_macs not_in <<<"$(awk -v tb="$WORK/leases" 'BEGIN { while ((getline l < tb) > 0) { split(l, x, " "); mac[x[1]] = x[2]; st[x[1]] = x[3] } }
    { if ($2 in got && got[$2] != $1) two++; got[$2] = $1 }
    END { for (ip in got) { n++; if (!(ip in mac) || (got[ip] != "-" && mac[ip] != got[ip]) || st[ip] != "bound") miss++ }
          print n + 0, two + 0, miss + 0 }' "$WORK/acked")"
bound=$(awk '$3 == "bound"' "$WORK/leases" | wc -l)
mac_twice=$(awk '$3 == "bound" { c[$2]++ } END { for (m in c) if (c[m] > 1) n++; print n + 0 }' "$WORK/leases")
# Replies without the client identifier (a server that does not echo it, RFC 6842) leave
# perfdhcp's list without MACs: then only the addresses can be checked.
[ "$(awk '$1 == "-"' "$WORK/acked" | wc -l)" -eq 0 ] || echo "           (perfdhcp's list has no client ids: the replies do not echo option 61; addresses checked only)"
check "lease table" $(( acked_n == 0 || two_macs + not_in + mac_twice > 0 )) \
    "$acked_n addresses ACKed, $bound bound rows; $not_in ACKed not bound to their MAC, $two_macs ACKed to two MACs, $mac_twice MACs with two bound leases"

# The event log: every switchover is a failover.takeover on the node that took the VIP
# and a failover.release on the one that gave it up, on both nodes' own event logs.
ev_ok=0 ev_detail=""
for r in p:10.91.0.1 s:10.92.1.2; do
    n=${r%%:*}
    evs=$(events "${r#*:}" failover.) || { ev_ok=1; ev_detail+="$n: no event log; "; continue; }
    # A release is three events (asked, released, services stopped): count the middle one.
    took=$(grep -c '^failover.takeover ' <<<"$evs" || true) gave=$(grep -c '^failover.release released the VIP' <<<"$evs" || true)
    want_took=$(awk -v n="$n" '$4 == n' "$WORK/res/switches" 2>/dev/null | wc -l)
    want_gave=$(awk -v n="$n" '$3 == n' "$WORK/res/switches" 2>/dev/null | wc -l)
    [ "$took" -eq "$want_took" ] && [ "$gave" -eq "$want_gave" ] || ev_ok=1
    ev_detail+="$n: $took takeovers / $want_took, $gave releases / $want_gave; "
done
check "failover events" $(( ev_ok != 0 || SWITCHES == 0 )) "${ev_detail%; } (events since the start vs switchovers made)"
# Takeovers nobody asked for: the peer looked dead (a stall) while it was alive.
unplanned=0
for a in 10.91.0.1 10.92.1.2; do
    unplanned=$((unplanned + $(events "$a" failover.takeover | grep -c '(Failover)' || true)))
done
check "no unplanned failover" $(( unplanned > 0 )) "$unplanned takeovers after a peer looked dead (failover.takeover ... (Failover))"
stalls() { # LOG: "count, longest" of the failover loop's own stalls
    grep -o 'our loop stalled [0-9.]*m\?s' "$1" | awk '{ v = $4; if (v ~ /ms$/) v = v / 1000; else v = v + 0; n++; if (v > m) m = v } END { printf "%d, longest %.2f s", n, m }'
}
echo "           failover loop stalls (self_stall): primary $(stalls "$WORK/p.log"), standby $(stalls "$WORK/s.log")"
check "loops finished" $(( STUCK > 0 )) "$STUCK loops still running ${DRAIN}s after the end"

# RSS and fds: flat after the warm-up.
flat() { # COLUMN BOUND_PCT BOUND_ABS UNIT_DIV: "first-third-max last-third-max verdict"
    awk -v c="$1" -v pct="$2" -v abs="$3" -v div="$4" -v w="$WARMUP" '$1 >= w { v[++n] = $c }
        END { if (n < 3) { print "- - too-few-samples"; exit }
              k = int(n / 3); a = 0; b = 0
              for (i = 1; i <= k; i++) if (v[i] > a) a = v[i]
              for (i = n - k + 1; i <= n; i++) if (v[i] > b) b = v[i]
              printf "%.0f %.0f %s\n", a / div, b / div, (b <= a * (1 + pct / 100) + abs * div) ? "flat" : "GROWING" }' "$WORK/res/samples"
}
echo "RSS and open fds of the two serve processes, every ${SAMPLE}s (warm-up ${WARMUP}s):"
printf '  %6s %12s %8s %8s %12s %8s %8s\n' t_s primary_MiB fds cpu_% standby_MiB fds cpu_%
hz=$(getconf CLK_TCK)
awk -v hz="$hz" '{ pc = (NR > 1 && $1 > t) ? ($4 - c) / hz / ($1 - t) * 100 : 0; sc = (NR > 1 && $1 > t) ? ($7 - d) / hz / ($1 - t) * 100 : 0
    printf "  %6d %12.1f %8d %8.0f %12.1f %8d %8.0f\n", $1, $2 / 1024, $3, pc, $5 / 1024, $6, sc; t = $1; c = $4; d = $7 }' "$WORK/res/samples"
awk '{ printf "  %6s %12.1f %8d %8s %12.1f %8d %8s  (after the drain, no load)\n", $1 "+", $2 / 1024, $3, "", $5 / 1024, $6, "" }' "$WORK/res/samples.after"
echo "flat = the last third's maximum <= the first third's (after warm-up) + ${RSS_BOUND_PCT}% + ${RSS_BOUND_MIB} MiB (RSS), + ${FD_BOUND} (fds)"
for c in "primary RSS:2:$RSS_BOUND_PCT:$RSS_BOUND_MIB:1024" "primary fds:3:0:$FD_BOUND:1" "standby RSS:5:$RSS_BOUND_PCT:$RSS_BOUND_MIB:1024" "standby fds:6:0:$FD_BOUND:1"; do
    IFS=: read -r name col pct abs div <<<"$c"
    read -r a b verdict <<<"$(flat "$col" "$pct" "$abs" "$div")"
    check "$name flat" $([ "$verdict" = flat ] && echo 0 || echo 1) "first third max $a, last third max $b: $verdict"
done
if [ ${#FAILED[@]} -eq 0 ]; then echo "RESULT pass"; else echo "RESULT FAIL: ${FAILED[*]}"; fi
} | tee "$REPORT"
mkdir -p "$(dirname "$RESULTS")"
cp "$REPORT" "$RESULTS"
log "report: $RESULTS"
grep -q '^RESULT pass' "$REPORT" || {
    # Keep the evidence of a failed run next to the report.
    keep=/var/tmp/us-soak-evidence.$ID
    rm -rf "$keep"; mkdir -p "$keep"
    cp -r "$WORK/res" "$WORK/runs" "$WORK/p.log" "$WORK/s.log" "$WORK/perfdhcp.out" "$keep/" 2>/dev/null || true
    die "see $RESULTS (logs in $keep)"
}
