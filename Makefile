# understudy — build, run, test, bench. Everything here is idempotent and runs as root
# on a fresh Debian 12 machine.

CARGO    ?= cargo
DATA_DIR ?= images
BIN      := target/release/understudy

# Debian packages the tests call as real, independent clients and tools.
TEST_PKGS  := curl busybox stress-ng isc-dhcp-client iproute2 sqlite3 rsync acl attr libcap2-bin util-linux python3 tar zstd e2fsprogs nftables iputils-ping iputils-arping tftp-hpa atftp
# The boot environment: iPXE, QEMU (SeaBIOS with the iPXE NIC ROM, OVMF for UEFI) to boot it, the tools it carries, cpio to list it,
# kmod (depmod) and binutils (objcopy) to build it.
TEST_PKGS  += ipxe ipxe-qemu ovmf qemu-system-x86 fdisk xfsprogs dosfstools cpio kmod binutils mount procps
# The layout replay tools the boot environment carries (md RAID, LVM, btrfs, UEFI boot entries).
TEST_PKGS  += mdadm lvm2 btrfs-progs efibootmgr
# A bootable Debian root for the standby tests, made once with debootstrap; man and
# systemd-analyze check what `make install` writes.
TEST_PKGS  += debootstrap man-db systemd
# The console's browser test: headless Chromium driven over WebDriver.
TEST_PKGS  += chromium chromium-driver
BENCH_PKGS := $(TEST_PKGS) debootstrap casync kea-admin kea-dhcp4-server dnsmasq-base jq time tftpd-hpa keepalived

.PHONY: all build run test bench soak demo deps bench-deps fmt lint clean fuzz-api fuzz pxe-binaries pxe-kernel standby-root install deb

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
		CARGO=$(CARGO) ./.ci/test-lanes

# The showcase: a namespace lab with a primary (a capture of a small Debian with understudy
# installed), `understudy standby add` against a QEMU VM that network-boots, each step's
# state and time, the pair's failover status, then the primary crashed and the VIP
# answering from the standby. About 4 minutes under TCG (the test build is shared with
# `make test`).
demo: deps pxe-kernel standby-root pxe-binaries
	UNDERSTUDY_DEMO=1 UNDERSTUDY_TEST_KERNEL=$(PXE_KERNEL)/root UNDERSTUDY_TEST_STANDBY_ROOT=$(STANDBY_ROOT)/root \
		$(CARGO) test --locked --test standby_join -- --nocapture --test-threads=1

bench: bench-deps build pxe-kernel standby-root
	UNDERSTUDY_BIN=$(BIN) ./benches/store.sh
	UNDERSTUDY_BIN=$(BIN) ./benches/deploy-remote.sh
	UNDERSTUDY_BIN=$(BIN) ./benches/update.sh
	UNDERSTUDY_BIN=$(BIN) ./benches/dhcp.sh
	UNDERSTUDY_BIN=$(BIN) ./benches/tftp.sh
	UNDERSTUDY_BIN=$(BIN) ./benches/failover.sh
	./benches/standby.sh

# The soak: a perfdhcp storm, 20 concurrent remote deploys, TFTP downloads, API listing
# loops and planned switchovers every few seconds, all at once for SOAK_SECS (default 600;
# `make soak SOAK_SECS=90` for a quick check), then its checks: failed requests, deployed
# trees, the lease table, the event log, RSS and fds flat (see README, Soak).
SOAK_SECS ?= 600
soak: bench-deps build
	SOAK_SECS=$(SOAK_SECS) UNDERSTUDY_BIN=$(BIN) ./benches/soak.sh

# Install the binary, the systemd unit, a default config (kept when one exists), the man
# pages and shell completions (generated from the binary's own argument definitions) and
# the network-boot binaries. DESTDIR stages, PREFIX places (default /usr/local);
# NO_BUILD=1 installs BIN as it is.
PREFIX  ?= /usr/local
DESTDIR ?=
BINDIR  := $(PREFIX)/bin
UNITDIR ?= $(PREFIX)/lib/systemd/system
GEN     := target/generated
install: $(if $(NO_BUILD),,build) pxe-binaries
	install -D -m 0755 $(BIN) $(DESTDIR)$(BINDIR)/understudy
	install -d $(DESTDIR)$(UNITDIR)
	sed 's|@BINDIR@|$(BINDIR)|g' packaging/understudy.service >$(DESTDIR)$(UNITDIR)/understudy.service
	chmod 0644 $(DESTDIR)$(UNITDIR)/understudy.service
	install -d -m 0755 $(DESTDIR)/etc/understudy
	[ -e $(DESTDIR)/etc/understudy/understudy.toml ] || install -m 0644 packaging/understudy.toml $(DESTDIR)/etc/understudy/understudy.toml
	install -d -m 0700 $(DESTDIR)/var/lib/understudy
	install -d -m 0755 $(DESTDIR)/var/lib/understudy/pxe
	install -m 0644 $(PXE_BINARIES) $(SB_BINARIES) $(DESTDIR)/var/lib/understudy/pxe/
	rm -rf $(GEN) && $(BIN) generate --out $(GEN)
	install -d $(DESTDIR)$(PREFIX)/share/man/man1
	install -m 0644 $(GEN)/man1/*.1 $(DESTDIR)$(PREFIX)/share/man/man1/
	install -D -m 0644 $(GEN)/completions/understudy.bash $(DESTDIR)$(PREFIX)/share/bash-completion/completions/understudy
	install -D -m 0644 $(GEN)/completions/_understudy $(DESTDIR)$(PREFIX)/share/zsh/vendor-completions/_understudy
	install -D -m 0644 $(GEN)/completions/understudy.fish $(DESTDIR)$(PREFIX)/share/fish/vendor_completions.d/understudy.fish

# A Debian package from this tree: the same files under /usr, the network-boot binaries
# taken from Debian's own packages at install time (postinst), the config a conffile.
VERSION := $(shell sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n1)
DEB     := target/understudy_$(VERSION)_amd64.deb
DEB_COMPRESS ?= xz
deb: $(if $(NO_BUILD),,build)
	rm -rf target/deb && mkdir -p target/deb/DEBIAN
	$(MAKE) --no-print-directory install NO_BUILD=1 BIN=$(BIN) DESTDIR=$(CURDIR)/target/deb PREFIX=/usr UNITDIR=/lib/systemd/system
	rm -rf target/deb/var/lib/understudy
	printf 'Package: understudy\nVersion: %s\nArchitecture: amd64\nMaintainer: understudy developers <root@localhost>\nDepends: libc6, ipxe, shim-signed, grub-efi-amd64-signed, busybox-static, fdisk, e2fsprogs, dosfstools, xfsprogs\nRecommends: mdadm, lvm2, efibootmgr, kmod\nSection: admin\nPriority: optional\nDescription: clone a cluster head node onto a standby and keep it ready to take over\n Image server, PXE boot server (DHCP, TFTP, HTTP/iPXE), installer and failover daemon.\n' $(VERSION) >target/deb/DEBIAN/control
	echo /etc/understudy/understudy.toml >target/deb/DEBIAN/conffiles
	install -m 0755 packaging/postinst target/deb/DEBIAN/postinst
	dpkg-deb --root-owner-group -Z$(DEB_COMPRESS) --build target/deb $(DEB)

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

# Coverage-guided fuzzing (cargo-fuzz, libFuzzer with ASan) of every parser of outside
# input: each target of fuzz/Cargo.toml for FUZZ_SECS seconds, one after the other, from
# seeds made by fuzz/seed.sh; prints execs, exec/s, cov and ft per target and fails on a
# crash. RUSTC_BOOTSTRAP lets the stable toolchain take the sanitizer flags.
# FUZZ_TARGETS picks some: make fuzz FUZZ_TARGETS="pack index".
FUZZ_SECS ?= 60
FUZZ_TARGETS ?=
fuzz:
	command -v cargo-fuzz >/dev/null || $(CARGO) install cargo-fuzz --locked
	./.ci/apt-ensure tar busybox attr curl tftp-hpa atftp python3
	FUZZ_SECS=$(FUZZ_SECS) nice -n 10 ./fuzz/run.sh $(FUZZ_TARGETS)
