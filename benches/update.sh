#!/usr/bin/env bash
# Update benchmark (run by `make bench`, as root): a deployed tree brought to a newer image
# with about 1% of its files changed (appended, edited in the middle, new, removed), by
# `understudy update --server` over a veth pair between two network namespaces, side by
# side with `rsync -aHAX --delete` from an rsync daemon over the same veth: wall time and
# bytes on the wire (the client veth's counters), then the same with nothing changed.
#
# Source tree: the cached debootstrap rootfs that benches/store.sh builds.
set -euo pipefail
export LC_ALL=C
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BIN=$(realpath "${UNDERSTUDY_BIN:-$REPO/target/release/understudy}")
CACHE=${UNDERSTUDY_BENCH_CACHE:-/var/cache/understudy-bench}
SRC=${UNDERSTUDY_BENCH_SRC:-$CACHE/rootfs-bookworm}
RESULTS=$REPO/benches/results/update-latest.txt
[[ -d $SRC ]] || { echo "bench: $SRC missing; run benches/store.sh first (it builds the rootfs)" >&2; exit 1; }
[[ -x $BIN ]] || { echo "bench: build first: cargo build --release" >&2; exit 1; }

ID=$$
NS_S=us-bu-srv-$ID
NS_C=us-bu-cli-$ID
VS=ubu-s-$ID
VC=ubu-c-$ID
WORK=$(mktemp -d /var/tmp/us-bench-update.XXXXXX)
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    ip netns del "$NS_S" 2>/dev/null || true
    ip netns del "$NS_C" 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT INT TERM

now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.3f", b - a }'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b == 0) print "inf"; else printf "%.3f", a / b }'; }
log() { printf '[update %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
# Bytes both ways through the client's end of the veth.
wire() { ip -n "$NS_C" -s -j link show dev "$VC" | python3 -c 'import json,sys; s=json.load(sys.stdin)[0]["stats64"]; print(s["rx"]["bytes"] + s["tx"]["bytes"])'; }

ip netns add "$NS_S"
ip netns add "$NS_C"
ip link add "$VS" type veth peer name "$VC"
ip link set "$VS" netns "$NS_S"
ip link set "$VC" netns "$NS_C"
ip -n "$NS_S" addr add 10.78.0.1/24 dev "$VS"
ip -n "$NS_C" addr add 10.78.0.2/24 dev "$VC"
for ns in "$NS_S" "$NS_C"; do ip -n "$ns" link set lo up; done
ip -n "$NS_S" link set "$VS" up
ip -n "$NS_C" link set "$VC" up

# v2: the rootfs with every 100th regular file changed, in turn appended (4 KiB), edited in
# the middle (4 KiB overwritten, size kept), removed, or given a new 8 KiB sibling. Files are
# replaced, not edited in place, so the hard-linked v1 stays as it was.
log "making v1 and v2 (1% of the files changed)"
cp -a "$SRC" "$WORK/v1"
cp -al "$WORK/v1" "$WORK/v2"
CHANGED=$(python3 - "$WORK/v2" <<'PY'
import os, random, shutil, sys
root = sys.argv[1]
rng = random.Random(1)
files = []
for d, _, names in os.walk(root):
    for n in names:
        p = os.path.join(d, n)
        if os.path.isfile(p) and not os.path.islink(p) and os.path.getsize(p) > 0:
            files.append(p)
files.sort()
n = 0
for i, p in enumerate(files[::100]):
    kind = i % 4
    if kind == 3:
        with open(p + ".new-in-v2", "wb") as f:
            f.write(rng.randbytes(8192))
    elif kind == 2:
        os.remove(p)
    else:
        data = bytearray(open(p, "rb").read())
        if kind == 0:
            data += rng.randbytes(4096)
        else:
            mid = len(data) // 2
            chunk = rng.randbytes(min(4096, len(data) - mid))
            data[mid:mid + len(chunk)] = chunk
        st = os.stat(p)
        tmp = p + ".tmp-v2"
        with open(tmp, "wb") as f:
            f.write(data)
        os.chmod(tmp, st.st_mode & 0o7777)
        os.chown(tmp, st.st_uid, st.st_gid)
        os.replace(tmp, p)
    n += 1
print(n)
PY
)
DATA=$WORK/data
"$BIN" --data-dir "$DATA" capture --name bench -q "$WORK/v1" >/dev/null
"$BIN" --data-dir "$DATA" capture --name bench -q "$WORK/v2" >/dev/null
"$BIN" --data-dir "$DATA" deploy bench@1 "$WORK/us" -q >/dev/null
cp -a "$WORK/v1" "$WORK/rs"

cat > "$WORK/serve.toml" <<TOML
data_dir = "$DATA"
[http]
listen = "10.78.0.1:8080"
TOML
ip netns exec "$NS_S" "$BIN" serve --config "$WORK/serve.toml" > "$WORK/serve.out" 2> "$WORK/serve.err" &
PIDS+=("$!")
for _ in $(seq 50); do grep -q "HTTP API on" "$WORK/serve.out" 2>/dev/null && break; sleep 0.1; done
TOKEN=$(cat "$DATA/admin.token")
cat > "$WORK/rsyncd.conf" <<CONF
uid = 0
gid = 0
use chroot = yes
numeric ids = yes
[root]
    path = $WORK/v2
    read only = yes
CONF
ip netns exec "$NS_S" rsync --daemon --no-detach --address=10.78.0.1 --port=8873 --config="$WORK/rsyncd.conf" &
PIDS+=("$!")
sleep 0.5

warm() { tar -cf - -C "$WORK" us rs v2 | cat > /dev/null; cat "$DATA"/store/packs/* > /dev/null; sync; }
us_update() { ip netns exec "$NS_C" "$BIN" --server http://10.78.0.1:8080 --token "$TOKEN" update bench@2 "$WORK/us" --json; }
rs_update() { ip netns exec "$NS_C" rsync -aHAX --delete --numeric-ids rsync://10.78.0.1:8873/root/ "$WORK/rs/"; }

warm
log "understudy update, 1% changed"
w=$(wire); t=$(now); us_update > "$WORK/us.json"; T_US=$(since "$t"); W_US=$(( $(wire) - w ))
warm
log "rsync -aHAX --delete, 1% changed"
w=$(wire); t=$(now); rs_update; T_RS=$(since "$t"); W_RS=$(( $(wire) - w ))
warm
log "both again, nothing changed"
w=$(wire); t=$(now); us_update > "$WORK/us2.json"; T_US0=$(since "$t"); W_US0=$(( $(wire) - w ))
w=$(wire); t=$(now); rs_update; T_RS0=$(since "$t"); W_RS0=$(( $(wire) - w ))

# The updated tree is v2, but for the identity files `update` keeps on a tree without a
# deployment record (and that record itself).
KEEP=(--exclude=/etc/hostname --exclude=/etc/hosts --exclude=/etc/machine-id --exclude=/var/lib/dbus/machine-id
      --exclude='/etc/ssh/ssh_host_*' --exclude=/etc/fstab --exclude=/var/lib/understudy/)
D_US=$(rsync -naHAXc --numeric-ids --delete -i "${KEEP[@]}" "$WORK/v2/" "$WORK/us/" | wc -l)
D_RS=$(rsync -naHAXc --numeric-ids --delete -i "$WORK/v2/" "$WORK/rs/" | wc -l)
SENT=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["bytes_transferred"])' "$WORK/us.json")

{
    echo "understudy update benchmark — $(date -Is) on $(nproc) cores"
    echo "tree: $SRC; $CHANGED files changed (appended, edited in the middle, removed, new); warm page cache; veth between two namespaces"
    printf '%-48s %12s %12s %8s %s\n' metric understudy rsync ratio goal
    printf '%-48s %12s %12s %8s %s\n' "1% changed: wall time (s)" "$T_US" "$T_RS" "$(ratio "$T_US" "$T_RS")" "<= 0.5"
    printf '%-48s %12s %12s %8s %s\n' "1% changed: bytes on the wire" "$W_US" "$W_RS" "$(ratio "$W_US" "$W_RS")" "<= 1.0"
    printf '%-48s %12s %12s %8s %s\n' "  file bytes fetched (update --json)" "$SENT" "-" "-" "-"
    printf '%-48s %12s %12s %8s %s\n' "nothing changed: wall time (s)" "$T_US0" "$T_RS0" "$(ratio "$T_RS0" "$T_US0")" "speed-up >= 10"
    printf '%-48s %12s %12s %8s %s\n' "nothing changed: bytes on the wire" "$W_US0" "$W_RS0" "$(ratio "$W_US0" "$W_RS0")" "-"
    printf '%-48s %12s %12s\n' "result == v2 (rsync -n lines; identity aside)" "$D_US" "$D_RS"
    echo "RATIO update_vs_rsync_time=$(ratio "$T_US" "$T_RS")"
    echo "RATIO update_vs_rsync_wire=$(ratio "$W_US" "$W_RS")"
    echo "RATIO update_nochange_speedup=$(ratio "$T_RS0" "$T_US0")"
} | tee "$RESULTS"
