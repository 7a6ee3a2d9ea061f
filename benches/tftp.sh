#!/usr/bin/env bash
# TFTP benchmark (run by `make bench`, as root): understudy's TFTP against tftpd-hpa
# (`in.tftpd -L -s`) on the same address, port, files and clients, one after the other,
# in a pair of network namespaces joined by a veth pair.
#  1. one 64 MiB fetch: atftp and curl with blksize 1468; atftp also with windowsize 16
#     (tftpd-hpa does not implement RFC 7440 and runs those in lock-step);
#  2. 100 concurrent atftp clients fetching 4 MiB each (blksize 1468, and windowsize 16):
#     failures (exit status or cmp) and total time.
# Each number is the best of 3 rounds, the two servers taking turns.
set -euo pipefail
export LC_ALL=C
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BIN=$(realpath "${UNDERSTUDY_BIN:-$REPO/target/release/understudy}")
RESULTS=$REPO/benches/results/tftp-latest.txt
CLIENTS=${UNDERSTUDY_BENCH_TFTP_CLIENTS:-100}
for t in atftp curl in.tftpd; do command -v $t >/dev/null || { echo "bench: $t missing (make bench-deps)" >&2; exit 1; }; done

ID=$$
NS_S=us-tftpb-s-$ID
NS_C=us-tftpb-c-$ID
IF_S=utb$((ID % 100000))s
IF_C=utb$((ID % 100000))c
SRV=10.89.0.1
WORK=$(mktemp -d /var/tmp/us-bench-tftp.XXXXXX)
PID=
cleanup() {
    [ -n "$PID" ] && kill "$PID" 2>/dev/null || true
    wait 2>/dev/null || true
    ip netns del "$NS_S" 2>/dev/null || true
    ip netns del "$NS_C" 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT INT TERM
log() { printf '[tftp-bench %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }

ip netns add "$NS_S"; ip netns add "$NS_C"
ip link add "$IF_S" type veth peer name "$IF_C"
ip link set "$IF_S" netns "$NS_S"; ip link set "$IF_C" netns "$NS_C"
ip -n "$NS_S" addr add $SRV/24 dev "$IF_S"; ip -n "$NS_C" addr add 10.89.0.2/24 dev "$IF_C"
for ns in "$NS_S" "$NS_C"; do ip -n "$ns" link set lo up; done
ip -n "$NS_S" link set "$IF_S" up; ip -n "$NS_C" link set "$IF_C" up

# tftpd-hpa drops privileges to its own user: everything must be world-readable.
chmod 755 "$WORK"; mkdir -p "$WORK/root" "$WORK/out"
head -c $((64 << 20)) /dev/urandom > "$WORK/root/big"
head -c $((4 << 20)) /dev/urandom > "$WORK/root/four"
chmod 644 "$WORK/root/"*
cat "$WORK/root/"* > /dev/null   # warm page cache for both servers

start_understudy() {
    mkdir -p "$WORK/us"
    cat > "$WORK/us/c.toml" <<TOML
data_dir = "$WORK/us"
[tftp]
listen = "$SRV:69"
root = "$WORK/root"
TOML
    ip netns exec "$NS_S" "$BIN" serve --config "$WORK/us/c.toml" > "$WORK/us.out" 2>&1 &
    PID=$!
}
start_tftpd_hpa() {
    ip netns exec "$NS_S" in.tftpd -L -a "$SRV:69" -s "$WORK/root" > "$WORK/hpa.out" 2>&1 &
    PID=$!
}
stop() { kill "$PID" 2>/dev/null || true; wait "$PID" 2>/dev/null || true; PID=; }

now() { date +%s.%N; }
secs() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f", b - a }'; }

# One 64 MiB fetch with CLIENT (atftp|curl) and atftp options; prints seconds or FAIL.
single() {
    local client=$1; shift
    local out=$WORK/out/single t0 t1
    rm -f "$out"; t0=$(now)
    if [ "$client" = curl ]; then
        ip netns exec "$NS_C" curl -sS --tftp-blksize 1468 -o "$out" "tftp://$SRV/big" || true
    else
        local opts=() o
        for o in "$@"; do opts+=(--option "$o"); done
        ip netns exec "$NS_C" atftp "${opts[@]}" -g -r big -l "$out" $SRV >/dev/null 2>&1 || true
    fi
    t1=$(now)
    if cmp -s "$out" "$WORK/root/big"; then secs "$t0" "$t1"; else echo FAIL; fi
}

# CLIENTS concurrent 4 MiB fetches; prints "seconds failures".
many() {
    local opts=() o i t0 t1 fails=0
    for o in "$@"; do opts+=(--option "$o"); done
    rm -f "$WORK"/out/m*
    t0=$(now)
    local pids=()
    for i in $(seq 1 "$CLIENTS"); do
        ip netns exec "$NS_C" atftp "${opts[@]}" -g -r four -l "$WORK/out/m$i" $SRV >/dev/null 2>&1 &
        pids+=($!)
    done
    for i in "${!pids[@]}"; do wait "${pids[$i]}" || fails=$((fails + 1)); done
    t1=$(now)
    for i in $(seq 1 "$CLIENTS"); do cmp -s "$WORK/out/m$i" "$WORK/root/four" || fails=$((fails + 1)); done
    echo "$(secs "$t0" "$t1") $fails"
}

# Best of ROUNDS, the servers interleaved round by round, so that a burst of load from
# elsewhere on a shared machine does not decide a ratio.
ROUNDS=${UNDERSTUDY_BENCH_TFTP_ROUNDS:-3}
best() { # best CURRENT NEW: the lower time ("FAIL" and failures lose)
    local cur=$1 new=$2
    if [ -z "$cur" ]; then echo "$new"; return; fi
    awk -v a="$cur" -v b="$new" 'BEGIN {
        split(a, x, " "); split(b, y, " ");
        if (x[1] == "FAIL" || (x[2] + 0 > 0)) { print b; exit }
        if (y[1] == "FAIL" || (y[2] + 0 > 0)) { print a; exit }
        print (y[1] + 0 < x[1] + 0) ? b : a }'
}
declare -A R
for round in $(seq 1 "$ROUNDS"); do
    for s in understudy tftpd_hpa; do
        log "$s (round $round of $ROUNDS)"
        "start_$s"; sleep 1
        v=$(single atftp "blksize 1468"); log "  atftp blksize 1468: ${v}s"; R[$s,atftp]=$(best "${R[$s,atftp]:-}" "$v")
        v=$(single curl); log "  curl blksize 1468: ${v}s"; R[$s,curl]=$(best "${R[$s,curl]:-}" "$v")
        v=$(single atftp "blksize 1468" "windowsize 16"); log "  atftp blksize 1468 windowsize 16: ${v}s"
        R[$s,win]=$(best "${R[$s,win]:-}" "$v")
        v=$(many "blksize 1468"); log "  $CLIENTS x 4 MiB, blksize 1468: $v"; R[$s,many]=$(best "${R[$s,many]:-}" "$v")
        v=$(many "blksize 1468" "windowsize 16"); log "  $CLIENTS x 4 MiB, windowsize 16: $v"
        R[$s,manywin]=$(best "${R[$s,manywin]:-}" "$v")
        stop; sleep 1
    done
done

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (a == "FAIL" || b == "FAIL" || a + 0 == 0) print "nan"; else printf "%.2f", b / a }'; }
{
    echo "understudy TFTP benchmark — $(date -Is) on $(nproc) cores; veth between namespaces; seconds (lower is better), best of $ROUNDS interleaved rounds"
    printf '%-44s %12s %12s\n' test understudy tftpd-hpa
    printf '%-44s %12s %12s\n' "64 MiB, atftp blksize 1468" "${R[understudy,atftp]}" "${R[tftpd_hpa,atftp]}"
    printf '%-44s %12s %12s\n' "64 MiB, curl blksize 1468" "${R[understudy,curl]}" "${R[tftpd_hpa,curl]}"
    printf '%-44s %12s %12s\n' "64 MiB, atftp blksize 1468 windowsize 16" "${R[understudy,win]}" "${R[tftpd_hpa,win]}"
    printf '%-44s %12s %12s\n' "$CLIENTS x 4 MiB, blksize 1468 (s, failures)" "${R[understudy,many]}" "${R[tftpd_hpa,many]}"
    printf '%-44s %12s %12s\n' "$CLIENTS x 4 MiB, +windowsize 16 (s, failures)" "${R[understudy,manywin]}" "${R[tftpd_hpa,manywin]}"
    echo "(tftpd-hpa 5.2 does not implement windowsize; it answers those requests in lock-step)"
    echo "RATIO tftp_vs_tftpd_hpa=$(ratio "${R[understudy,atftp]}" "${R[tftpd_hpa,atftp]}")"
    echo "RATIO tftp_curl_vs_tftpd_hpa=$(ratio "${R[understudy,curl]}" "${R[tftpd_hpa,curl]}")"
    echo "RATIO tftp_windowsize16_vs_tftpd_hpa=$(ratio "${R[understudy,win]}" "${R[tftpd_hpa,win]}")"
    echo "RATIO tftp_${CLIENTS}_clients_vs_tftpd_hpa=$(ratio "${R[understudy,many]% *}" "${R[tftpd_hpa,many]% *}")"
    echo "RATIO tftp_${CLIENTS}_clients_windowsize16_vs_tftpd_hpa=$(ratio "${R[understudy,manywin]% *}" "${R[tftpd_hpa,manywin]% *}")"
} | tee "$RESULTS"
