#!/usr/bin/env bash
# Benchmark for the understudy image store (run by `make bench`, as root, on Debian 12).
#
# Builds (once, cached) a real Debian bookworm root filesystem with debootstrap, then
# compares understudy against tar+zstd and casync on that tree:
#   - first capture           vs  tar -cf - | zstd -T0 -3          (time, size on disk)
#   - re-capture, unchanged   vs  first capture                    (speed-up, goal >= 20x)
#   - capture after ~1% files changed: added_bytes vs zstd -3 of the changed bytes (goal <= 2)
#   - deploy                  vs  zstd -d | tar -x                 (time, goal <= 1.0)
#   - casync make / extract   on the same tree                     (time, store size)
#
# The page cache cannot be dropped reliably in a sandbox, so every timed step runs warm:
# the source tree is read once (tar | cat > /dev/null) right before each timed command.
#
# Environment:
#   UNDERSTUDY_BIN           understudy binary        (default: target/release/understudy)
#   UNDERSTUDY_BENCH_CACHE   rootfs cache + scratch   (default: /var/cache/understudy-bench)
#   UNDERSTUDY_BENCH_MIRROR  Debian mirror            (default: http://deb.debian.org/debian)
#   UNDERSTUDY_BENCH_REPS    repetitions of each timed understudy/baseline pair (default 2, best kept)
#   UNDERSTUDY_BENCH_SKIP_CASYNC=1   skip the casync comparison
#   UNDERSTUDY_BENCH_KEEP=1  keep the scratch directory (for debugging; it can be GBs)
set -euo pipefail
export LC_ALL=C

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO"

BIN=${UNDERSTUDY_BIN:-target/release/understudy}
CACHE=${UNDERSTUDY_BENCH_CACHE:-/var/cache/understudy-bench}
MIRROR=${UNDERSTUDY_BENCH_MIRROR:-http://deb.debian.org/debian}
SUITE=bookworm
ROOTFS=$CACHE/rootfs-$SUITE
MARKER=$CACHE/rootfs-$SUITE.ok
RESULTS_DIR=$REPO/benches/results
RESULTS=$RESULTS_DIR/store-latest.txt

# Packages on top of minbase; together > 800 MB and > 30,000 files.
# Changing this list invalidates the cached rootfs (it is recorded in the marker).
PACKAGES=perl,python3,gcc,g++,libc6-dev,vim,git,emacs-nox,openssh-server,systemd,locales,man-db,manpages-dev,linux-headers-amd64,python3-dev,less,curl,ca-certificates
MIN_BYTES=$((800 * 1000 * 1000))
MIN_FILES=30000

NAME=bench            # image name used for all captures
REPS=${UNDERSTUDY_BENCH_REPS:-2}   # interleaved repetitions of the timed pairs; best is kept
CHANGE_EVERY=100      # modify every 100th regular file (~1%)

log()  { printf '[bench %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die()  { printf 'bench: error: %s\n' "$*" >&2; exit 1; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b + 0 == 0) print "nan"; else printf "%.3f", a / b }'; }
mb()    { awk -v a="$1" 'BEGIN { printf "%.1f MB", a / 1e6 }'; }
now()   { date +%s.%N; }
fmin()  { awk -v a="$1" -v b="$2" 'BEGIN { if (a == "" || b + 0 < a + 0) print b; else print a }'; }
fadd()  { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f", a + b }'; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.3f", b - a }'; }
dusize() { du -sb "$1" | cut -f1; }
fsize()  { stat -c %s "$1"; }

# ---------------------------------------------------------------- preconditions

[[ $EUID -eq 0 ]] || die "must run as root (debootstrap, deploy of a rootfs with device nodes and owners)"

if [[ ! -x $BIN ]]; then
    cat >&2 <<EOF
bench: understudy binary not found at '$BIN'.
Build it first:
    cargo build --release
or point UNDERSTUDY_BIN at an existing binary.
EOF
    exit 1
fi
BIN=$(realpath "$BIN")
if ! "$BIN" --help 2>/dev/null | grep -qw capture; then
    die "'$BIN --help' does not list a 'capture' subcommand; is this the right binary?"
fi

missing=()
command -v debootstrap >/dev/null || missing+=(debootstrap)
command -v casync      >/dev/null || missing+=(casync)
command -v zstd        >/dev/null || missing+=(zstd)
command -v jq          >/dev/null || missing+=(jq)
[[ -x /usr/bin/time ]] || missing+=(time)
if ((${#missing[@]})); then
    log "installing missing tools: ${missing[*]}"
    apt-get install -y "${missing[@]}" >&2 || { apt-get update >&2 && apt-get install -y "${missing[@]}" >&2; }
fi

mkdir -p "$CACHE"
exec 9>"$CACHE/.lock"
flock -n 9 || die "another benchmark run holds $CACHE/.lock"

# Unmount anything mounted at or below $1 (debootstrap mounts /proc and /sys while it
# runs; a killed run may leave them behind, and rm -rf must never descend into them).
umount_under() {
    local dir mnts
    dir=$(realpath -m "$1")
    mapfile -t mnts < <(awk -v d="$dir" '$5 == d || index($5, d "/") == 1 { print $5 }' /proc/self/mountinfo | sort -r)
    local m
    for m in "${mnts[@]}"; do
        log "unmounting leftover mount $m"
        umount -l "$m" || true
    done
}

safe_rm() {
    local p
    for p in "$@"; do
        [[ -e $p || -L $p ]] || continue
        umount_under "$p"
        rm -rf --one-file-system "$p"
    done
}

# Remove scratch dirs of earlier runs that were killed before their trap ran.
for old in "$CACHE"/run.*; do
    [[ -d $old ]] || continue
    log "removing stale scratch dir $old"
    safe_rm "$old"
done

# ---------------------------------------------------------------- rootfs (cached)

marker_content() { printf 'suite=%s\nmirror=%s\npackages=%s\n' "$SUITE" "$MIRROR" "$PACKAGES"; }

rootfs_ok() {
    [[ -f $MARKER && -d $ROOTFS ]] || return 1
    # Only the first three lines identify the build; the rest is informational.
    [[ "$(head -n 3 "$MARKER")" == "$(marker_content)" ]]
}

build_rootfs() {
    local partial=$ROOTFS.partial t0 secs bytes files
    log "building $SUITE rootfs with debootstrap into $partial (this takes a while)"
    rm -f "$MARKER"
    safe_rm "$partial" "$ROOTFS"
    mkdir -p "$CACHE/debs"
    t0=$(now)
    if ! debootstrap --variant=minbase --include="$PACKAGES" --cache-dir="$CACHE/debs" \
            "$SUITE" "$partial" "$MIRROR" >"$CACHE/debootstrap.log" 2>&1; then
        tail -n 30 "$CACHE/debootstrap.log" >&2
        umount_under "$partial"
        die "debootstrap failed (full log: $CACHE/debootstrap.log); the partial tree will be rebuilt next run"
    fi
    umount_under "$partial"
    # Nothing useful to benchmark in downloaded .debs; keep the tree deterministic.
    rm -rf "$partial"/var/cache/apt/archives/*.deb
    secs=$(since "$t0")
    bytes=$(dusize "$partial")
    files=$(find "$partial" | wc -l)
    if ((bytes < MIN_BYTES || files < MIN_FILES)); then
        die "rootfs too small: $bytes bytes, $files files (need >= $MIN_BYTES bytes and >= $MIN_FILES files); add packages to PACKAGES"
    fi
    mv "$partial" "$ROOTFS"
    { marker_content; printf 'build_seconds=%s\nbytes=%s\nfiles=%s\nbuilt=%s\n' "$secs" "$bytes" "$files" "$(date -Is)"; } >"$MARKER.tmp"
    sync
    mv "$MARKER.tmp" "$MARKER"
    log "rootfs built in ${secs}s: $bytes bytes, $files files"
}

if rootfs_ok; then
    log "using cached rootfs $ROOTFS"
else
    build_rootfs
fi
umount_under "$ROOTFS"
SRC=$ROOTFS
SRC_BYTES=$(dusize "$SRC")
SRC_FILES=$(find "$SRC" | wc -l)
SRC_REGULAR=$(find "$SRC" -type f | wc -l)
SRC_INODES=$(find "$SRC" -type f -printf '%i\n' | sort -u | wc -l)   # regular files, hard links once
ROOTFS_BUILD_SECS=$(sed -n 's/^build_seconds=//p' "$MARKER")

# ---------------------------------------------------------------- scratch space
#
# Nothing is deleted until the run ends. On ext4 without a journal (as on the dev VM)
# the inode allocator skips inodes deleted in the last 30-180 s (recently_deleted() in
# fs/ext4/ialloc.c), which after mass deletions makes every file creation scan whole
# inode groups: the same `tar -x` was measured at 2.9 s and at 20-30 s. Deleting
# deploy trees between steps would distort every file-creating step that follows.
# A run therefore needs ~8 GB of scratch space next to the cache.

avail=$(df -B1 --output=avail "$CACHE" | tail -n 1)
((avail > 10 * 1000 * 1000 * 1000)) || die "need >= 10 GB free in $CACHE for scratch data (have $((avail / 1000000)) MB)"
WORK=$(mktemp -d "$CACHE/run.XXXXXX")   # same filesystem as the cache, not tmpfs
cleanup() {
    local rc=$?
    if [[ ${UNDERSTUDY_BENCH_KEEP:-0} == 1 ]]; then
        log "keeping scratch dir $WORK (UNDERSTUDY_BENCH_KEEP=1)"
    else
        safe_rm "$WORK"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'echo "bench: command failed (line $LINENO): $BASH_COMMAND" >&2' ERR
trap 'exit 130' INT
trap 'exit 143' TERM

DATA=$WORK/data.1
LOGS=$WORK/logs
mkdir -p "$LOGS"

# Read the whole tree (file data included) so the timed command runs on a warm cache.
# GNU tar skips reading file data when its archive is /dev/null, hence the pipe.
warm() { tar -cf - -C "$1" . | cat >/dev/null; }

# timed VAR cmd... : run cmd, store its wall time in seconds in VAR; stdout is kept.
timed() {
    local __var=$1; shift
    local t0
    t0=$(now)
    "$@" || return $?
    printf -v "$__var" '%s' "$(since "$t0")"
}

# us STEP args... : run understudy, stdout to $LOGS/STEP.out; on failure report and exit.
us() {
    local step=$1; shift
    local rc=0
    "$BIN" --data-dir "$DATA" "$@" >"$LOGS/$step.out" 2>"$LOGS/$step.err" || rc=$?
    if ((rc != 0)); then
        {
            echo "bench: understudy failed (exit $rc) in step '$step':"
            printf '  command:'; printf ' %q' "$BIN" --data-dir "$DATA" "$@"; echo
            echo "  --- stderr (last 40 lines) ---"
            tail -n 40 "$LOGS/$step.err" | sed 's/^/  /'
            echo "  --- stdout (last 10 lines) ---"
            tail -n 10 "$LOGS/$step.out" | sed 's/^/  /'
        } >&2
        exit 1
    fi
}

# json STEP FIELD : numeric field from the JSON object printed by a capture step.
json() {
    local v
    v=$(jq -er --arg f "$2" '.[$f] | numbers' "$LOGS/$1.out" 2>/dev/null) || {
        echo "bench: capture output of step '$1' lacks numeric field '$2'; output was:" >&2
        head -c 2000 "$LOGS/$1.out" >&2; echo >&2
        return 1
    }
    printf '%s' "$v"
}

store_size() {
    [[ -d $DATA/store ]] || die "$DATA/store does not exist after capture (contents of $DATA: $(ls -A "$DATA" | tr '\n' ' '))"
    dusize "$DATA/store"
}

# Compare two trees: type, mode, owner, size, mtime (whole seconds), symlink target of
# every entry, plus the contents of regular files and xattrs.
# Prints "OK" or "MISMATCH (...)"; details go to $LOGS/verify-*.diff.
manifest() {
    (cd "$1" && find . -printf '%y %m %U %G %s %T@ %l\t%p\n' \
        | awk -F'\t' '{ n = split($1, a, " "); if (a[1] == "d") { a[5] = "-" }; sub(/\..*/, "", a[6])
                        line = a[1]; for (i = 2; i <= n; i++) line = line " " a[i]
                        print $2 "\t" line }' | sort)
}
mtimes_ns() { (cd "$1" && find . -printf '%p\t%T@\n' | sort); }
contents() {
    (cd "$1" && find . -type f -print0 | xargs -0 -r -n 256 -P 2 md5sum | sort -k 2)
}
xattrs() {
    (cd "$1" && getfattr -R -P -d -m - --absolute-names . 2>/dev/null | awk 'NF' ) || true
}
verify_tree() {
    local label=$1 a=$2 b=$3 d n problems=()
    d=$LOGS/verify-$label
    manifest "$a" >"$d.ma"; manifest "$b" >"$d.mb"
    mtimes_ns "$a" >"$d.nsa"; mtimes_ns "$b" >"$d.nsb"
    if ! diff "$d.ma" "$d.mb" >"$d.meta.diff"; then
        n=$(grep -c '^[<>]' "$d.meta.diff" || true)
        problems+=("metadata: $n differing lines")
    fi
    contents "$a" >"$d.ca"; contents "$b" >"$d.cb"
    if ! diff "$d.ca" "$d.cb" >"$d.content.diff"; then
        n=$(grep -c '^[<>]' "$d.content.diff" || true)
        problems+=("contents: $n differing lines")
    fi
    if command -v getfattr >/dev/null; then
        xattrs "$a" >"$d.xa"; xattrs "$b" >"$d.xb"
        if ! diff "$d.xa" "$d.xb" >"$d.xattr.diff"; then
            problems+=("xattrs differ")
        fi
    fi
    if ((${#problems[@]})); then
        local IFS=';'
        echo "MISMATCH (${problems[*]})"
        {
            echo "bench: $label: deployed tree differs from source: ${problems[*]}"
            for f in "$d.meta.diff" "$d.content.diff" "$d.xattr.diff"; do
                if [[ -s $f ]]; then
                    echo "  first differences in $(basename "$f"):"
                    head -n 12 "$f" | sed 's/^/    /'
                fi
            done
        } >&2
    else
        echo "OK"
    fi
    if ! diff -q "$d.nsa" "$d.nsb" >/dev/null; then
        log "$label: note: sub-second mtimes differ for $(diff "$d.nsa" "$d.nsb" | grep -c '^<' || true) entries (not counted as a mismatch)"
    fi
    return 0
}

log "source tree: $SRC ($(mb "$SRC_BYTES"), $SRC_FILES entries, $SRC_REGULAR regular files)"
log "understudy: $BIN"
log "scratch:    $WORK"

# ---------------------------------------------------------------- 1. first capture vs tar+zstd
#
# Timings on a shared VM are noisy (file creation speed was seen to vary 10x between
# runs), so the understudy/baseline pairs are run REPS times, interleaved, and the best
# (minimum) wall time of each side is reported.

TARZST=$WORK/rootfs.tar.zst
T_TAR=; T_CAP1=
for ((rep = 1; rep <= REPS; rep++)); do
    rm -f "$TARZST"
    sync; warm "$SRC"
    log "[$rep/$REPS] tar | zstd -T0 -3 ..."
    timed t bash -c 'set -o pipefail; tar -cf - -C "$1" . | zstd -T0 -3 -q -o "$2"' _ "$SRC" "$TARZST"
    log "  ${t}s"
    T_TAR=$(fmin "$T_TAR" "$t")

    DATA=$WORK/data.$rep      # a fresh data dir per repetition; nothing is deleted mid-run
    sync; warm "$SRC"
    log "[$rep/$REPS] understudy capture (first, empty store) ..."
    timed t us capture1 capture --name "$NAME" --json "$SRC"
    log "  ${t}s"
    T_CAP1=$(fmin "$T_CAP1" "$t")
done
TARZST_BYTES=$(fsize "$TARZST")
STORE1=$(store_size)
CAP1_FILES=$(json capture1 files)
CAP1_BYTES=$(json capture1 bytes)
CAP1_ADDED=$(json capture1 added_bytes)
log "first capture: best ${T_CAP1}s (tar|zstd ${T_TAR}s), store $(mb "$STORE1"), files=$CAP1_FILES bytes=$CAP1_BYTES added=$CAP1_ADDED"

# ---------------------------------------------------------------- 2. re-capture unchanged tree

T_CAP2=; CAP2_ADDED=0
for ((rep = 1; rep <= REPS; rep++)); do
    sync; warm "$SRC"
    log "[$rep/$REPS] understudy capture (unchanged re-capture) ..."
    timed t us capture2 capture --name "$NAME" --json "$SRC"
    a=$(json capture2 added_bytes)
    log "  ${t}s, added=$a"
    T_CAP2=$(fmin "$T_CAP2" "$t")
    CAP2_ADDED=$(awk -v a="$a" -v b="$CAP2_ADDED" 'BEGIN { print (a > b) ? a : b }')
done
STORE2=$(store_size)

# ---------------------------------------------------------------- 3. deploy vs tar -x

T_DEP=; T_UNTAR=; T_DEP_SYNCED=; T_UNTAR_SYNCED=
for ((rep = 1; rep <= REPS; rep++)); do
    DEP_US=$WORK/deploy-understudy.$rep
    DEP_TAR=$WORK/deploy-tar.$rep
    sync; warm "$SRC"
    log "[$rep/$REPS] understudy deploy ..."
    timed t us deploy deploy "$NAME" "$DEP_US"
    timed ts sync
    log "  ${t}s (+ sync ${ts}s)"
    T_DEP=$(fmin "$T_DEP" "$t")
    T_DEP_SYNCED=$(fmin "$T_DEP_SYNCED" "$(fadd "$t" "$ts")")

    mkdir "$DEP_TAR"
    sync; warm "$SRC"
    log "[$rep/$REPS] zstd -d | tar -x ..."
    timed t bash -c 'set -o pipefail; zstd -d -q -c "$1" | tar -xf - -C "$2"' _ "$TARZST" "$DEP_TAR"
    timed ts sync
    log "  ${t}s (+ sync ${ts}s)"
    T_UNTAR=$(fmin "$T_UNTAR" "$t")
    T_UNTAR_SYNCED=$(fmin "$T_UNTAR_SYNCED" "$(fadd "$t" "$ts")")
done

log "verifying deployed tree against source ..."
VERIFY_DEPLOY=$(verify_tree deploy "$SRC" "$DEP_US")
log "  deploy verify: $VERIFY_DEPLOY"

# ---------------------------------------------------------------- 4. casync

CASYNC=0
if [[ ${UNDERSTUDY_BENCH_SKIP_CASYNC:-0} != 1 ]]; then
    CASYNC=1
    CA_STORE=$WORK/casync.castr
    CA_INDEX=$WORK/rootfs.caidx
    CA_DEP=$WORK/deploy-casync
    sync; warm "$SRC"
    log "casync make ..."
    timed T_CA_MAKE casync make --store="$CA_STORE" "$CA_INDEX" "$SRC" >"$LOGS/casync-make.out" 2>"$LOGS/casync-make.err" \
        || { tail -n 20 "$LOGS/casync-make.err" >&2; die "casync make failed"; }
    CA_STORE1=$(( $(dusize "$CA_STORE") + $(fsize "$CA_INDEX") ))

    sync; warm "$SRC"
    log "casync extract ..."
    timed T_CA_EXTRACT casync extract --store="$CA_STORE" "$CA_INDEX" "$CA_DEP" >"$LOGS/casync-extract.out" 2>"$LOGS/casync-extract.err" \
        || { tail -n 20 "$LOGS/casync-extract.err" >&2; die "casync extract failed"; }
    timed T_CA_EXTRACT_SYNC sync
fi

# ---------------------------------------------------------------- 5. ~1% of files changed

MOD=$WORK/modified
log "copying tree for modification (cp -a) ..."
cp -a "$SRC" "$MOD"

# Deterministic, compressible "random-ish" text: seed and length in, exactly $2 bytes out.
gen() {
    awk -v seed="$1" -v n="$2" 'BEGIN {
        srand(seed)
        nw = split("alpha beta gamma delta config value error warning info debug path usr lib " \
                   "share bin etc var log cache module kernel socket daemon user group", w, " ")
        out = 0
        while (out < n) {
            line = sprintf("%08x %s.%s %s=%d\n", int(rand() * 4294967296),
                           w[int(rand() * nw) + 1], w[int(rand() * nw) + 1],
                           w[int(rand() * nw) + 1], int(rand() * 100000))
            if (out + length(line) > n) line = substr(line, 1, n - out)
            printf "%s", line
            out += length(line)
        }
    }'
}

CHANGES=$WORK/changes.bin        # the bytes written (appended or overwritten), concatenated
CHANGED_LIST=$WORK/changed.list  # NUL-separated relative paths of changed files
: >"$CHANGES"; : >"$CHANGED_LIST"
N_CHANGED=0; N_APPEND=0; N_OVERWRITE=0; CHANGED_RAW=0
idx=0
while IFS= read -r -d '' rel; do
    idx=$((idx + 1))
    ((idx % CHANGE_EVERY == 0)) || continue
    f=$MOD/$rel
    [[ -f $f && ! -L $f ]] || continue
    size=$(fsize "$f")
    patch=$WORK/patch
    if (( (idx / CHANGE_EVERY) % 2 == 0 )) || (( size < 16 )); then
        # append 2..6 KB
        n=$(( 2048 + (idx * 997) % 4096 ))
        gen "$idx" "$n" >"$patch"
        cat "$patch" >>"$f"
        N_APPEND=$((N_APPEND + 1))
    else
        # overwrite up to 4 KB in the middle of the file (size unchanged)
        n=$(( size / 2 )); ((n > 4096)) && n=4096
        off=$(( (size - n) / 2 ))
        gen "$idx" "$n" >"$patch"
        dd if="$patch" of="$f" bs=64K seek="$off" oflag=seek_bytes conv=notrunc status=none
        N_OVERWRITE=$((N_OVERWRITE + 1))
    fi
    cat "$patch" >>"$CHANGES"
    CHANGED_RAW=$((CHANGED_RAW + n))
    printf '%s\0' "$rel" >>"$CHANGED_LIST"
    N_CHANGED=$((N_CHANGED + 1))
done < <(cd "$SRC" && find . -type f -size +0 -printf '%P\0' | sort -z)
rm -f "$WORK/patch"
CHANGED_ZST=$(zstd -3 -q -c "$CHANGES" | wc -c)
# Informational: the full new contents of the changed files, compressed.
CHANGED_FILES_ZST=$( (cd "$MOD" && xargs -0 -r cat -- <"$CHANGED_LIST") | zstd -3 -q -c | wc -c)
log "changed $N_CHANGED files ($N_APPEND appended, $N_OVERWRITE overwritten): $CHANGED_RAW bytes, $CHANGED_ZST compressed"

sync; warm "$MOD"
log "understudy capture (after ~1% change) ..."
timed T_CAP3 us capture3 capture --name "$NAME" --json "$MOD"
CAP3_ADDED=$(json capture3 added_bytes)
STORE3=$(store_size)
DATA_TOTAL=$(dusize "$DATA")
log "  ${T_CAP3}s, added=$CAP3_ADDED, store grew by $((STORE3 - STORE2))"

if ((CASYNC)); then
    sync; warm "$MOD"
    log "casync make (after ~1% change, same store) ..."
    CA_STORE_BEFORE=$(dusize "$CA_STORE")
    timed T_CA_MAKE2 casync make --store="$CA_STORE" "$WORK/modified.caidx" "$MOD" >"$LOGS/casync-make2.out" 2>"$LOGS/casync-make2.err" \
        || { tail -n 20 "$LOGS/casync-make2.err" >&2; die "casync make (modified) failed"; }
    CA_ADDED=$(( $(dusize "$CA_STORE") - CA_STORE_BEFORE + $(fsize "$WORK/modified.caidx") ))
fi

# images list: sanity check that all captures (1 + REPS + 1) are recorded as versions.
us list images list --json
N_VERSIONS=$(jq --arg n "$NAME" '[.[] | select(.name == $n)] | length' "$LOGS/list.out" 2>/dev/null || echo "?")

# ---------------------------------------------------------------- report

R_CAP_TIME=$(ratio "$T_CAP1" "$T_TAR")
R_CAP_SIZE=$(ratio "$STORE1" "$TARZST_BYTES")
R_RECAP=$(ratio "$T_CAP1" "$T_CAP2")
R_CHANGE=$(ratio "$CAP3_ADDED" "$CHANGED_ZST")
R_DEPLOY=$(ratio "$T_DEP" "$T_UNTAR")
R_DEPLOY_SYNC=$(ratio "$T_DEP_SYNCED" "$T_UNTAR_SYNCED")

goal() { # value op target
    awk -v v="$1" -v op="$2" -v t="$3" 'BEGIN {
        if (v == "nan") { print "n/a"; exit }
        ok = (op == ">=") ? (v + 0 >= t + 0) : (v + 0 <= t + 0)
        printf "%s %s %s", (ok ? "PASS" : "FAIL"), op, t }'
}

{
    echo "understudy image store benchmark — $(date -Is) on $(hostname) ($(nproc) cores)"
    echo "binary: $BIN ($("$BIN" --version 2>/dev/null | head -n 1 || echo 'version unknown'))"
    echo "source: debootstrap $SUITE minbase + $PACKAGES"
    echo "        $SRC: $SRC_BYTES bytes ($(mb "$SRC_BYTES")), $SRC_FILES entries, $SRC_REGULAR regular files; rootfs build took ${ROOTFS_BUILD_SECS:-?}s"
    echo "cache:  warm — page cache not dropped; the source tree is read in full (tar | cat >/dev/null) before every timed step, and sync'ed before it"
    echo "timing: wall clock; first capture, re-capture and deploy pairs are best of $REPS interleaved runs; casync and the 1% change capture run once"
    echo "change: $N_CHANGED files changed ($N_APPEND appended 2-6 KB, $N_OVERWRITE overwritten <=4 KB in the middle), $CHANGED_RAW bytes raw, $CHANGED_ZST bytes zstd -3"
    echo
    printf '%-44s %16s %16s %9s  %s\n' "metric" "understudy" "baseline" "ratio" "goal"
    printf '%-44s %16s %16s %9s  %s\n' "--------------------------------------------" "----------------" "----------------" "---------" "----------"
    row() { printf '%-44s %16s %16s %9s  %s\n' "$@"; }
    row "first capture time (s) vs tar|zstd -3"       "$T_CAP1"  "$T_TAR"        "$R_CAP_TIME" "-"
    row "first capture size (B) store vs .tar.zst"    "$STORE1"  "$TARZST_BYTES" "$R_CAP_SIZE" "-"
    row "re-capture unchanged (s): first / re-capture" "$T_CAP1" "$T_CAP2"       "$R_RECAP"    "$(goal "$R_RECAP" '>=' 20)"
    row "  files in capture (json) vs file inodes"    "$CAP1_FILES" "$SRC_INODES" "$(ratio "$CAP1_FILES" "$SRC_INODES")" "-"
    row "  re-capture added_bytes"                    "$CAP2_ADDED" "-"          "-"           "-"
    row "1% change: added_bytes vs changed zstd -3"   "$CAP3_ADDED" "$CHANGED_ZST" "$R_CHANGE" "$(goal "$R_CHANGE" '<=' 2)"
    row "  1% change: store growth (du) (B)"          "$((STORE3 - STORE2))" "-" "-" "-"
    row "  1% change: changed files whole, zstd -3"   "-" "$CHANGED_FILES_ZST" "-" "info"
    row "  1% change: capture time (s)"               "$T_CAP3"  "-"             "-"           "-"
    row "  data dir total after all captures (B)"     "$DATA_TOTAL" "-"          "-"           "-"
    row "deploy time (s) vs zstd -d | tar -x"         "$T_DEP"   "$T_UNTAR"      "$R_DEPLOY"   "$(goal "$R_DEPLOY" '<=' 1.0)"
    row "  deploy + sync (s)"                         "$T_DEP_SYNCED" "$T_UNTAR_SYNCED" "$R_DEPLOY_SYNC" "-"
    row "  deployed tree == source"                   "$VERIFY_DEPLOY" "-" "-" "-"
    if ((CASYNC)); then
        R_CA_MAKE=$(ratio "$T_CAP1" "$T_CA_MAKE")
        R_CA_SIZE=$(ratio "$STORE1" "$CA_STORE1")
        R_CA_EXTRACT=$(ratio "$T_DEP" "$T_CA_EXTRACT")
        R_CA_CHANGE=$(ratio "$CAP3_ADDED" "$CA_ADDED")
        row "casync make time (s) vs first capture"       "$T_CAP1" "$T_CA_MAKE"    "$R_CA_MAKE"    "-"
        row "casync store size (B, store+index)"          "$STORE1" "$CA_STORE1"    "$R_CA_SIZE"    "-"
        row "casync extract time (s) vs deploy"           "$T_DEP"  "$T_CA_EXTRACT" "$R_CA_EXTRACT" "-"
        row "casync 1% change: added bytes"               "$CAP3_ADDED" "$CA_ADDED" "$R_CA_CHANGE"  "-"
        row "casync 1% change: make time vs capture (s)"  "$T_CAP3" "$T_CA_MAKE2"   "$(ratio "$T_CAP3" "$T_CA_MAKE2")" "-"
    fi
    row "images list: versions of '$NAME'"            "$N_VERSIONS" "$((REPS + 2))" "-" "-"
    echo
    echo "RATIO first_capture_time=$R_CAP_TIME"
    echo "RATIO first_capture_size=$R_CAP_SIZE"
    echo "RATIO recapture_speedup=$R_RECAP"
    echo "RATIO change_added_bytes=$R_CHANGE"
    echo "RATIO deploy_time=$R_DEPLOY"
    echo "RATIO deploy_time_with_sync=$R_DEPLOY_SYNC"
    if ((CASYNC)); then
        echo "RATIO casync_make_time=$R_CA_MAKE"
        echo "RATIO casync_store_size=$R_CA_SIZE"
        echo "RATIO casync_extract_time=$R_CA_EXTRACT"
        echo "RATIO casync_change_added_bytes=$R_CA_CHANGE"
    fi
    echo "(ratios are understudy / baseline, except recapture_speedup = first capture / re-capture)"
} >"$WORK/table.txt"

mkdir -p "$RESULTS_DIR"
cp "$WORK/table.txt" "$RESULTS.tmp" && mv "$RESULTS.tmp" "$RESULTS"
echo
cat "$WORK/table.txt"
echo
log "results written to ${RESULTS#"$REPO"/}"
