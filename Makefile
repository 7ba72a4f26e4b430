# The project's entry points. `make test` is what CI runs (through .ci/run).

SHELL := /bin/bash
CARGO ?= cargo

.PHONY: test deps fmt-check clippy unit bench build

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
