# understudy — build, run, test, bench. Everything here is idempotent and runs as root
# on a fresh Debian 12 machine.

CARGO    ?= cargo
DATA_DIR ?= images
BIN      := target/release/understudy

# Debian packages the tests call as real, independent clients and tools.
TEST_PKGS  := curl busybox isc-dhcp-client iproute2 sqlite3 rsync acl attr libcap2-bin util-linux python3 tar zstd e2fsprogs nftables iputils-ping iputils-arping tftp-hpa atftp fdisk dosfstools
BENCH_PKGS := $(TEST_PKGS) debootstrap casync kea-admin kea-dhcp4-server dnsmasq-base jq time tftpd-hpa

.PHONY: all build run test bench deps bench-deps fmt lint clean fuzz-api fuzz

all: build

build:
	$(CARGO) build --release --locked

# Starts the server on its embedded defaults (data dir images/, HTTP on 127.0.0.1:8080).
run: build
	$(BIN) --data-dir $(DATA_DIR) serve

deps:
	@./.ci/apt-ensure $(TEST_PKGS)

bench-deps:
	@./.ci/apt-ensure $(BENCH_PKGS)

test: deps
	$(CARGO) test --locked -- --test-threads=4

bench: bench-deps build
	UNDERSTUDY_BIN=$(BIN) ./benches/store.sh
	UNDERSTUDY_BIN=$(BIN) ./benches/deploy-remote.sh
	UNDERSTUDY_BIN=$(BIN) ./benches/dhcp.sh
	UNDERSTUDY_BIN=$(BIN) ./benches/tftp.sh

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
