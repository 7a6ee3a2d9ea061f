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
echo "[bench] standby: BIOS, UEFI and Secure Boot end to end under TCG (release build; about 10 minutes)" >&2
UNDERSTUDY_TEST_STANDBY_ROOT=$ROOT UNDERSTUDY_TEST_KERNEL=$KERNEL \
    cargo test --release --locked --test netboot -- --nocapture --test-threads=3 --include-ignored standby_boots_its_own_disk >"$LOG" 2>&1 || {
    tail -n 40 "$LOG" >&2
    echo "bench: the standby boot tests failed" >&2
    exit 1
}
BYTES=$(du -sb "$ROOT" | cut -f1)
# SystemImager's FAQ: 7 minutes for 1 GB at 100 Mbit, scaled to this image's size.
SI=$(awk -v b="$BYTES" 'BEGIN { printf "%.0f", 420 * b / 1e9 }')
{
    echo "standby provisioning, power-on to login under QEMU TCG ($(date -Is))"
    echo "image: debootstrap bookworm, $(awk -v b="$BYTES" 'BEGIN { printf "%.0f MB", b / 1e6 }')"
    echo "phases in seconds: firmware_loader = power-on to the boot environment's kernel (firmware, iPXE or shim+GRUB);"
    echo "  boot_env = kernel to the agent; partition, stream, identity, bootloader = the agent's own timing;"
    echo "  reboot = deployed to the disk's kernel (firmware again, told to boot locally, GRUB); os_boot = kernel to login"
    grep -E '^bench-standby ' "$LOG" | sed 's/^bench-standby //' | sort
    grep -E '^bench-standby ' "$LOG" | while read -r _ fields; do
        fw=$(tr ' ' '\n' <<<"$fields" | sed -n 's/^firmware=//p')
        total=$(tr ' ' '\n' <<<"$fields" | sed -n 's/^total=//p')
        awk -v fw="$fw" -v s="$total" -v si="$SI" 'BEGIN {
            printf "%s: %.0fs to login; seed (30 min) / understudy = %.1fx; SystemImager (%ds at 100 Mbit) / understudy = %.2fx\n",
                fw, s, 1800 / s, si, si / s }'
    done
} | tee "$RESULTS"
