# teltonika-ingest: every command a developer or CI needs. `make help` lists them.
SHELL := /bin/bash
SWIFT ?= swift
FUZZ_SECONDS ?= 60
CI_FUZZ_SECONDS ?= 30
ARGS ?=

.PHONY: help deps build release test tsan check-deploy run bench bench-cluster fuzz lint format clean

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed -E 's/:.*## /\t/'

deps: ## Install what is missing (apt), once
	@scripts/deps.sh

build: deps ## Debug build of every target
	$(SWIFT) build

release: deps ## Release build of the binary, static Swift stdlib, revision compiled in (as the Dockerfile builds it)
	SWIFT=$(SWIFT) scripts/release.sh

test: deps ## Every test against a throwaway redis-server, then fuzz the codec briefly
	scripts/test.sh
	scripts/check-deploy.sh
	scripts/fuzz.sh $(CI_FUZZ_SECONDS)

tsan: deps ## Every test with the tests and the server built under ThreadSanitizer (.build-thread); any race report fails
	SANITIZE=thread scripts/test.sh

check-deploy: deps ## Lint Dockerfile, check alert rules, manifests and dashboard
	scripts/check-deploy.sh

run: deps ## Serve devices on 5027 (starts a local redis-server unless REDIS_URL is set); ARGS=... passes flags
	scripts/run.sh $(ARGS)

bench: deps ## Micro benchmarks, instructions per record (callgrind), then end-to-end (Redis ceiling, simulator, latency, CPU, idle RSS, Redis topologies, hostile clients); figures in docs/PERFORMANCE.md
	scripts/bench.sh

bench-cluster: deps ## Records/s of one release server on a local 3-primary Redis Cluster, stream in 1 vs 3 shards (not in make test); figures in docs/PERFORMANCE.md
	scripts/bench-cluster.sh

fuzz: deps ## libFuzzer over the framer and decoder for FUZZ_SECONDS (default 60)
	scripts/fuzz.sh $(FUZZ_SECONDS)

lint: deps ## swift-format lint, strict (config: .swift-format)
	$(SWIFT) format lint --strict --recursive Package.swift Sources Tests Fuzz Benchmarks/Package.swift Benchmarks/Benchmarks

format: ## Rewrite sources in the house format
	$(SWIFT) format --in-place --recursive Package.swift Sources Tests Fuzz Benchmarks/Package.swift Benchmarks/Benchmarks

clean: ## Remove build folders
	rm -rf .build .build-* Benchmarks/.build
