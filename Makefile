# understudy — build, run, test, bench. Everything here is idempotent and runs as root
# on a fresh Debian 12 machine.

CARGO    ?= cargo
DATA_DIR ?= images
BIN      := target/release/understudy

# Debian packages the tests call as real, independent clients and tools.
TEST_PKGS  := curl busybox isc-dhcp-client iproute2 sqlite3 rsync acl attr libcap2-bin util-linux python3 tar zstd e2fsprogs nftables iputils-ping iputils-arping tftp-hpa atftp
# The boot environment: iPXE, QEMU (SeaBIOS with the iPXE NIC ROM, OVMF for UEFI) to boot it, the tools it carries, cpio to list it,
# kmod (depmod) and binutils (objcopy) to build it.
TEST_PKGS  += ipxe ipxe-qemu ovmf qemu-system-x86 fdisk xfsprogs dosfstools cpio kmod binutils mount procps
# The layout replay tools the boot environment carries (md RAID, LVM, btrfs, UEFI boot entries).
TEST_PKGS  += mdadm lvm2 btrfs-progs efibootmgr
# A bootable Debian root for the standby tests, made once with debootstrap.
TEST_PKGS  += debootstrap
BENCH_PKGS := $(TEST_PKGS) debootstrap casync kea-admin kea-dhcp4-server dnsmasq-base jq time tftpd-hpa keepalived

.PHONY: all build run test bench deps bench-deps fmt lint clean fuzz-api fuzz pxe-binaries pxe-kernel standby-root

# iPXE binaries served over TFTP/HTTP, from Debian's ipxe package (gitignored in pxe/).
PXE_BINARIES := pxe/undionly.kpxe pxe/ipxe.efi pxe/snponly.efi
# The Secure Boot chain ([dhcp] uefi_loader = "shim"): Debian's signed shim and MokManager,
# and the signed GRUB network image, which shim loads as grubx64.efi.
SB_BINARIES  := pxe/shimx64.efi pxe/mmx64.efi pxe/grubx64.efi
# Debian's kernel (and busybox-static) for the boot-environment tests, fetched once.
PXE_CACHE    ?= /var/cache/understudy-test
PXE_KERNEL   := $(PXE_CACHE)/debian-kernel
STANDBY_ROOT := $(PXE_CACHE)/standby-bookworm

all: build

build: pxe-binaries
	$(CARGO) build --release --locked

pxe-binaries: $(PXE_BINARIES) $(SB_BINARIES)

pxe/shimx64.efi pxe/mmx64.efi:
	@./.ci/apt-ensure shim-signed
	install -m 0644 /usr/lib/shim/$(@F).signed $@

pxe/grubx64.efi:
	@./.ci/apt-ensure grub-efi-amd64-signed
	install -m 0644 /usr/lib/grub/x86_64-efi-signed/grubnetx64.efi.signed $@

pxe/%.kpxe:
	@./.ci/apt-ensure ipxe
	install -m 0644 /usr/lib/ipxe/$(@F) $@

pxe/%.efi:
	@./.ci/apt-ensure ipxe
	install -m 0644 /usr/lib/ipxe/$(@F) $@

pxe-kernel: deps
	./.ci/fetch-debian-kernel $(PXE_KERNEL)

# Debian bookworm with its kernel, GRUB (BIOS, UEFI, signed), systemd: the "primary" the
# standby tests capture and boot (about 2 minutes and 250 MB of packages, once).
standby-root: deps
	./.ci/build-standby-root $(STANDBY_ROOT)

# Starts the server on its embedded defaults (data dir images/, HTTP on 127.0.0.1:8080).
run: build
	$(BIN) --data-dir $(DATA_DIR) serve

deps:
	@./.ci/apt-ensure $(TEST_PKGS)

bench-deps:
	@./.ci/apt-ensure $(BENCH_PKGS)

test: deps pxe-kernel standby-root pxe-binaries
	UNDERSTUDY_TEST_KERNEL=$(PXE_KERNEL)/root UNDERSTUDY_TEST_STANDBY_ROOT=$(STANDBY_ROOT)/root \
		$(CARGO) test --locked --no-fail-fast -- --test-threads=4

bench: bench-deps build pxe-kernel standby-root
	UNDERSTUDY_BIN=$(BIN) ./benches/store.sh
	UNDERSTUDY_BIN=$(BIN) ./benches/deploy-remote.sh
	UNDERSTUDY_BIN=$(BIN) ./benches/dhcp.sh
	UNDERSTUDY_BIN=$(BIN) ./benches/tftp.sh
	UNDERSTUDY_BIN=$(BIN) ./benches/failover.sh
	./benches/standby.sh

fmt:
	$(CARGO) fmt --all

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --all-targets --locked -- -D warnings

clean:
	$(CARGO) clean

# OpenAPI-driven fuzzing of the running server (schemathesis from PyPI).
fuzz-api: deps
	./.ci/fuzz-api

# Coverage-guided fuzzing of the DHCP packet path and manifest decoding (cargo-fuzz;
# RUSTC_BOOTSTRAP lets the stable toolchain take the sanitizer flags). FUZZ_SECS each.
FUZZ_SECS ?= 60
fuzz:
	command -v cargo-fuzz >/dev/null || $(CARGO) install cargo-fuzz --locked
	cd fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz run dhcp_packet -- -max_total_time=$(FUZZ_SECS)
	cd fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz run manifest -- -max_total_time=$(FUZZ_SECS)
