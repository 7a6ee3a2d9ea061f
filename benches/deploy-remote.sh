#!/usr/bin/env bash
# Remote deploy benchmark (run by `make bench`, as root): understudy's HTTP deploy over a
# veth pair between two network namespaces, side by side with a local deploy and with
# `rsync -aHAX` from an rsync daemon over the same veth; then 10 concurrent remote
# deploys of one image (aggregate throughput, server peak memory).
#
# Source tree: the cached debootstrap rootfs that benches/store.sh builds.
#
# Each run (local deploy, remote deploy, rsync; UNDERSTUDY_BENCH_RUNS rounds, medians
# reported) is timed up to a syncfs of its target, since deploy syncs and rsync does not.
# Every measured run writes into a filesystem of its own, made fresh (ext4 on a loop
# device, as a node's new root would be): the host's own filesystem here is ext4 without
# a journal, where creating inodes right after `rm -rf` of a large tree scans past every
# recently deleted inode (ext4's recently_deleted(), 60 s or more): a run that followed
# the deletion of the previous run's tree spent most of its time in ext4_create and was
# 8x slower than the same run on a clean filesystem, whichever tool it was.
set -euo pipefail
export LC_ALL=C
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BIN=$(realpath "${UNDERSTUDY_BIN:-$REPO/target/release/understudy}")
CACHE=${UNDERSTUDY_BENCH_CACHE:-/var/cache/understudy-bench}
SRC=${UNDERSTUDY_BENCH_SRC:-$CACHE/rootfs-bookworm}
CONCURRENT=${UNDERSTUDY_BENCH_CONCURRENT:-10}
RESULTS=$REPO/benches/results/deploy-remote-latest.txt
[[ -d $SRC ]] || { echo "bench: $SRC missing; run benches/store.sh first (it builds the rootfs)" >&2; exit 1; }
[[ -x $BIN ]] || { echo "bench: build first: cargo build --release" >&2; exit 1; }
command -v rsync >/dev/null || apt-get install -y rsync >&2

ID=$$
NS_S=us-bench-srv-$ID
NS_C=us-bench-cli-$ID
WORK=$(mktemp -d /var/tmp/us-bench-remote.XXXXXX)
PIDS=()
MOUNTS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    for m in "${MOUNTS[@]}"; do umount "$m" 2>/dev/null || true; done
    ip netns del "$NS_S" 2>/dev/null || true
    ip netns del "$NS_C" 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT INT TERM

now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.3f", b - a }'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f", a / b }'; }
log() { printf '[deploy-remote %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }

# Two namespaces joined by a veth pair; addresses exist only inside them.
ip netns add "$NS_S"
ip netns add "$NS_C"
ip link add "usb-s-$ID" type veth peer name "usb-c-$ID"
ip link set "usb-s-$ID" netns "$NS_S"
ip link set "usb-c-$ID" netns "$NS_C"
ip -n "$NS_S" addr add 10.77.0.1/24 dev "usb-s-$ID"
ip -n "$NS_C" addr add 10.77.0.2/24 dev "usb-c-$ID"
for ns in "$NS_S" "$NS_C"; do ip -n "$ns" link set lo up; done
ip -n "$NS_S" link set "usb-s-$ID" up
ip -n "$NS_C" link set "usb-c-$ID" up

DATA=$WORK/data
log "capturing $SRC"
"$BIN" --data-dir "$DATA" capture --name bench -q "$SRC" >/dev/null
BYTES=$(du -sb --apparent-size "$SRC" | cut -f1)

cat > "$WORK/serve.toml" <<TOML
data_dir = "$DATA"
[http]
listen = "10.77.0.1:8080"
TOML
ip netns exec "$NS_S" "$BIN" serve --config "$WORK/serve.toml" > "$WORK/serve.out" 2> "$WORK/serve.err" &
SERVER_PID=$!
PIDS+=("$SERVER_PID")
for _ in $(seq 50); do grep -q "HTTP API on" "$WORK/serve.out" 2>/dev/null && break; sleep 0.1; done
TOKEN=$(cat "$DATA/admin.token")

cat > "$WORK/rsyncd.conf" <<CONF
uid = 0
gid = 0
use chroot = yes
numeric ids = yes
[root]
    path = $SRC
    read only = yes
CONF
ip netns exec "$NS_S" rsync --daemon --no-detach --address=10.77.0.1 --port=8873 --config="$WORK/rsyncd.conf" &
PIDS+=("$!")
sleep 0.5

# A fresh, empty ext4 filesystem mounted at $WORK/$1 (size $2), for one measured run.
fresh_fs() {
    truncate -s "$2" "$WORK/$1.img"
    mkfs.ext4 -q -F "$WORK/$1.img"
    mkdir -p "$WORK/$1"
    mount -o loop "$WORK/$1.img" "$WORK/$1"
    MOUNTS+=("$WORK/$1")
}
# Unmount and remove a run's filesystem.
drop_fs() { umount "$WORK/$1"; rm -rf "${WORK:?}/$1" "$WORK/$1.img"; }

warm() { tar -cf - -C "$SRC" . | cat > /dev/null; cat "$DATA"/store/packs/* > /dev/null; }

FS_SIZE=$(awk -v b="$BYTES" 'BEGIN { printf "%d", b * 2 + 1073741824 }')

# One measured run into a fresh filesystem: the write, then a syncfs of that filesystem
# (deploys run with --no-sync and get it from outside, so every tool pays the same flush:
# a deploy syncs by default, rsync never does). Sets W (write, s) and S (syncfs, s).
timed() {
    local name=$1 t
    shift
    fresh_fs "$name" "$FS_SIZE"
    warm
    sync
    t=$(now)
    "$@" >/dev/null
    W=$(since "$t")
    t=$(now)
    sync -f "$WORK/$name"
    S=$(since "$t")
}
median() { printf '%s\n' "$@" | sort -g | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }
sum() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f", a + b }'; }
# Lowest and highest of the per-round ratios a[i]/b[i] (arrays named by $1 and $2).
ratio_range() {
    local -n xs=$1 ys=$2
    local i out=()
    for i in "${!xs[@]}"; do out+=("$(ratio "${xs[$i]}" "${ys[$i]}")"); done
    printf '%s\n' "${out[@]}" | sort -g | awk 'NR == 1 { lo = $1 } { hi = $1 } END { printf "%s-%s", lo, hi }'
}

# The machine may be shared: RUNS rounds of the three, interleaved, and their medians.
RUNS=${UNDERSTUDY_BENCH_RUNS:-3}
L=() R=() Y=() RW=() YW=() LS=() RS=() YS=()
DIFF=
for round in $(seq "$RUNS"); do
    log "round $round/$RUNS: local deploy"
    timed local "$BIN" --data-dir "$DATA" deploy bench "$WORK/local/t" -q --no-sync
    LS+=("$S") L+=("$(sum "$W" "$S")")
    drop_fs local

    log "round $round/$RUNS: remote deploy over veth"
    timed remote ip netns exec "$NS_C" "$BIN" --data-dir "$WORK/cli-data" --server http://10.77.0.1:8080 \
        --token "$TOKEN" deploy bench "$WORK/remote/t" -q --no-sync
    RW+=("$W") RS+=("$S") R+=("$(sum "$W" "$S")")
    [[ -n $DIFF ]] || DIFF=$(rsync -naHAXc --numeric-ids --delete -i "$SRC/" "$WORK/remote/t/" | wc -l)
    drop_fs remote

    log "round $round/$RUNS: rsync -aHAX from an rsync daemon over the same veth"
    timed rsync ip netns exec "$NS_C" rsync -aHAX --numeric-ids rsync://10.77.0.1:8873/root/ "$WORK/rsync/t/"
    YW+=("$W") YS+=("$S") Y+=("$(sum "$W" "$S")")
    drop_fs rsync
done
T_LOCAL=$(median "${L[@]}") T_REMOTE=$(median "${R[@]}") T_RSYNC=$(median "${Y[@]}")
T_REMOTE_W=$(median "${RW[@]}") T_RSYNC_W=$(median "${YW[@]}")

fresh_fs conc $((FS_SIZE * CONCURRENT))
warm; sync
log "$CONCURRENT concurrent remote deploys"
t=$(now)
cpids=()
for i in $(seq "$CONCURRENT"); do
    ip netns exec "$NS_C" "$BIN" --data-dir "$WORK/cli-data" --server http://10.77.0.1:8080 --token "$TOKEN" deploy bench "$WORK/conc/c$i" -q --no-sync >/dev/null &
    cpids+=("$!")
done
fail=0
for p in "${cpids[@]}"; do wait "$p" || fail=$((fail + 1)); done
sync
T_CONC=$(since "$t")
RSS_KB=$(awk '/VmHWM/ {print $2}' "/proc/$SERVER_PID/status")
drop_fs conc

MB=$(awk -v b="$BYTES" 'BEGIN { printf "%.1f", b / 1e6 }')
{
    echo "understudy remote deploy benchmark — $(date -Is) on $(nproc) cores"
    echo "tree: $SRC ($MB MB apparent); warm page cache; veth between two network namespaces"
    echo "each run into a fresh ext4 and ends with its syncfs; medians of $RUNS interleaved rounds"
    printf '%-52s %10s %10s %8s %s\n' metric understudy baseline ratio goal
    printf '%-52s %10s %10s %8s %s\n' "remote deploy (s) vs local deploy (s)" "$T_REMOTE" "$T_LOCAL" "$(ratio "$T_LOCAL" "$T_REMOTE")" "throughput ratio >= 0.8 (rounds: $(ratio_range L R))"
    printf '%-52s %10s %10s %8s %s\n' "remote deploy (s) vs rsync -aHAX daemon (s)" "$T_REMOTE" "$T_RSYNC" "$(ratio "$T_RSYNC" "$T_REMOTE")" "speed-up >= 2 (rounds: $(ratio_range Y R))"
    printf '%-52s %10s %10s %8s %s\n' "  the same without the final syncfs (s)" "$T_REMOTE_W" "$T_RSYNC_W" "$(ratio "$T_RSYNC_W" "$T_REMOTE_W")" "rounds: $(ratio_range YW RW)"
    printf '%-52s %10s\n' "syncfs after the write (s): local, remote, rsync" "$(median "${LS[@]}"), $(median "${RS[@]}"), $(median "${YS[@]}")"
    printf '%-52s %10s %10s %8s %s\n' "remote deploy throughput (MB/s)" "$(awk -v b="$BYTES" -v t="$T_REMOTE" 'BEGIN{printf "%.0f", b/t/1e6}')" "-" "-" "-"
    printf '%-52s %10s %10s %8s %s\n' "$CONCURRENT concurrent deploys: aggregate MB/s" "$(awk -v b="$BYTES" -v n="$CONCURRENT" -v t="$T_CONC" 'BEGIN{printf "%.0f", n*b/t/1e6}')" "-" "-" "failures: $fail"
    printf '%-52s %10s %10s %8s %s\n' "server peak RSS (MB)" "$(awk -v k="$RSS_KB" 'BEGIN{printf "%.0f", k/1024}')" "-" "-" "-"
    printf '%-52s %10s\n' "remote deploy == source (rsync -n lines)" "$DIFF"
    echo "RATIO remote_vs_local_throughput=$(ratio "$T_LOCAL" "$T_REMOTE")"
    echo "RATIO remote_vs_rsync_speedup=$(ratio "$T_RSYNC" "$T_REMOTE")"
} | tee "$RESULTS"
