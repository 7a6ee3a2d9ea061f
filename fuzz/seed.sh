#!/bin/sh
# Generate the seed corpora of every fuzz target into fuzz/seeds/TARGET (run by `make
# fuzz` when fuzz/seeds is missing; reproducible, nothing large is committed). Seeds come
# from real inputs: datagrams captured from real TFTP clients (tftp-hpa, atftp, curl),
# tars written by GNU tar, busybox and `images export`, a real capture's pack and index,
# the product's own heartbeat encoder, kernel command lines and boot script values, the
# config examples of README.md and packaging/, and this machine's /proc/cmdline.
set -eu
cd "$(dirname "$0")"
OUT=${1:-seeds}
rm -rf "$OUT.tmp"
mkdir -p "$OUT.tmp"
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

# A small tree with what images hold: links, a fifo, a device, xattrs, a sparse file.
T=$WORK/tree
mkdir -p "$T/etc/default" "$T/usr/bin" "$T/var/empty"
printf 'root:x:0:0:root:/root:/bin/bash\n' >"$T/etc/passwd"
printf 'GRUB_CMDLINE_LINUX="console=ttyS0"\n' >"$T/etc/default/grub"
printf '#!/bin/sh\necho hi\n' >"$T/usr/bin/hello"
chmod 4755 "$T/usr/bin/hello"
ln -s ../usr/bin/hello "$T/etc/hello-link"
ln "$T/etc/passwd" "$T/etc/passwd-"
mkfifo "$T/var/fifo"
mknod "$T/var/null" c 1 3 2>/dev/null || true
setfattr -n user.comment -v seed "$T/etc/passwd" 2>/dev/null || true
truncate -s 1M "$T/var/sparse"
printf 'data' | dd of="$T/var/sparse" bs=1 seek=524288 conv=notrunc 2>/dev/null
touch -d @1700000000.123456789 "$T/etc/passwd"

# Encoder-made seeds and a real capture's pack, index, manifest and export.
# Built by cargo fuzz with the targets' flags (no second build of the crate).
RUSTC_BOOTSTRAP=1 cargo fuzz build seed
ASAN_OPTIONS=detect_leaks=0 "target/$(rustc -vV | sed -n 's/^host: //p')/release/seed" "$OUT.tmp" "$T"

# Tars as other tools write them.
tdir=$OUT.tmp/tar_import
for fmt in posix gnu ustar v7; do
    tar -C "$T" --format=$fmt -cf "$tdir/gnu-$fmt.tar" . 2>/dev/null || true
done
tar -C "$T" --format=posix --sparse --xattrs -cf "$tdir/gnu-posix-sparse-xattrs.tar" .
tar -C "$T" --format=gnu --sparse -cf "$tdir/gnu-oldsparse.tar" var/sparse etc
(cd "$T" && busybox tar -cf "$OLDPWD/$tdir/busybox.tar" etc usr) 2>/dev/null || true
long=$WORK/long/$(printf 'd%.0s' $(seq 1 120))/$(printf 'f%.0s' $(seq 1 120))
mkdir -p "$(dirname "$long")" && echo x >"$long"
tar -C "$WORK/long" --format=gnu -cf "$tdir/gnu-longname.tar" .
tar -C "$WORK/long" --format=posix -cf "$tdir/posix-longname.tar" .

# Datagrams of real TFTP clients.
python3 tftp_capture.py "$OUT.tmp/tftp_packet" "$WORK/port" &
cap=$!
while [ ! -s "$WORK/port" ]; do sleep 0.1; done
port=$(cat "$WORK/port")
cd "$WORK"
timeout 5 tftp -m binary 127.0.0.1 "$port" -c get undionly.kpxe >/dev/null 2>&1 || true
timeout 5 tftp -m ascii 127.0.0.1 "$port" -c get pxelinux.cfg/default >/dev/null 2>&1 || true
timeout 5 atftp --option "blksize 1428" --option "tsize 0" --option "timeout 3" -g -r grubx64.efi -l g 127.0.0.1 "$port" >/dev/null 2>&1 || true
timeout 5 atftp --option "windowsize 8" -g -r /boot/vmlinuz -l v 127.0.0.1 "$port" >/dev/null 2>&1 || true
timeout 5 curl -s --tftp-blksize 1468 -o c "tftp://127.0.0.1:$port/ipxe.efi" || true
timeout 5 curl -s --tftp-no-options -o c "tftp://127.0.0.1:$port/../etc/passwd" || true
cd - >/dev/null
kill "$cap" 2>/dev/null || true
wait "$cap" 2>/dev/null || true

# The config examples users copy.
cdir=$OUT.tmp/config
mkdir -p "$cdir"
cp ../packaging/understudy.toml "$cdir/packaging.toml"
awk -v d="$cdir" '/^```toml/{n++; f=sprintf("%s/readme-%02d.toml", d, n); on=1; next} /^```/{on=0} on{print > f}' ../README.md

# This machine's own kernel command line.
cat /proc/cmdline >"$OUT.tmp/kernel_cmdline/proc-cmdline"

rm -rf "$OUT"
mv "$OUT.tmp" "$OUT"
for d in "$OUT"/*; do echo "seeds: $(basename "$d"): $(ls "$d" | wc -l) files"; done
