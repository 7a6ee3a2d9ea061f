#!/usr/bin/env bash
# Standby provisioning benchmark (run by `make bench`, as root): power-on to the deployed
# standby's login prompt under QEMU TCG for the debootstrapped bookworm image (~830 MB
# with kernel, GRUB and systemd; `make standby-root`), phase by phase, by running the
# end-to-end tests in tests/netboot.rs in release mode and reading the phase lines they
# print. Compared with the seed's figure for this step (HA-OSCAR: "30 minutes to one
# hour") and SystemImager's FAQ (7-10 minutes for 1 GB at 100 Mbit; 7 min scaled to the
# image's size). TCG is a software CPU, far slower than the hardware those figures are for,
# so the ratios understate understudy.
set -euo pipefail
export LC_ALL=C
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO"
RESULTS=$REPO/benches/results/standby-latest.txt
ROOT=${UNDERSTUDY_TEST_STANDBY_ROOT:-/var/cache/understudy-test/standby-bookworm/root}
KERNEL=${UNDERSTUDY_TEST_KERNEL:-/var/cache/understudy-test/debian-kernel/root}
[[ -d $ROOT ]] || { echo "bench: $ROOT missing: run make standby-root" >&2; exit 1; }
LOG=$(mktemp /var/tmp/us-bench-standby.XXXXXX)
trap 'rm -f "$LOG"' EXIT
echo "[bench] standby: end-to-end boots under TCG (release build; a few minutes)" >&2
UNDERSTUDY_TEST_STANDBY_ROOT=$ROOT UNDERSTUDY_TEST_KERNEL=$KERNEL \
    cargo test --release --locked --test netboot -- --nocapture --test-threads=2 standby secure_boot >"$LOG" 2>&1 || {
    tail -n 40 "$LOG" >&2
    echo "bench: the standby boot tests failed" >&2
    exit 1
}
BYTES=$(du -sb "$ROOT" | cut -f1)
SI=$(awk -v b="$BYTES" 'BEGIN { printf "%.0f", 420 * b / 1e9 }')
{
    echo "standby provisioning, power-on to login under QEMU TCG ($(date -Is))"
    echo "image: debootstrap bookworm, $(awk -v b="$BYTES" 'BEGIN { printf "%.0f MB", b / 1e6 }')"
    grep -E '^(standby|secure boot)' "$LOG" || true
    grep -E '^standby .*to login ([0-9]+)s' "$LOG" | sed -E 's/^standby ([^:]+):.* to login ([0-9]+)s.*/\1 \2/' |
        while read -r fw secs; do
            awk -v fw="$fw" -v s="$secs" -v si="$SI" 'BEGIN {
                printf "%s: %ds to login; seed (30 min) / understudy = %.1fx; SystemImager (%ds at 100 Mbit) / understudy = %.2fx\n",
                    fw, s, 1800 / s, si, si / s }'
        done
} | tee "$RESULTS"
