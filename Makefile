# The project's entry points. `make demo` shows the mesh at work; `make test` is what CI runs
# (through .ci/run).

SHELL := /bin/bash
CARGO ?= cargo
TARGET_DIR ?= $(or $(CARGO_TARGET_DIR),target)

.PHONY: demo test deps fmt-check clippy unit bench build

## demo: builds, installs Envoy when missing, and runs cp-lite with two apps behind kuma-dp + Envoy:
##       default deny, a TrafficPermission, SPIFFE identities, a live certificate rotation
demo: deps
	$(CARGO) build --workspace --bins
	@$(TARGET_DIR)/debug/demo

## test: formatting, lints and the whole test suite, installing what the tests need first
test: deps fmt-check clippy unit

## deps: install the tools the tests need (openssl CLI) when missing
deps:
	@.ci/install-deps

fmt-check:
	$(CARGO) fmt --all -- --check

clippy:
	$(CARGO) clippy --workspace --all-targets -- -D warnings

unit:
	$(CARGO) build --workspace --bins
	$(CARGO) test --workspace

build:
	$(CARGO) build --workspace --release

## bench: performance figures, one `name: value unit` line each
bench: deps
	$(CARGO) build --release --workspace --bins
	@$(CARGO) run --quiet --release -p integration-tests --bin bench
	@$(CARGO) run --quiet --release -p integration-tests --bin bench_agent
