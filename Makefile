# meshward — see README.md. Every target installs what it needs first.
SHELL := /bin/bash
PY := .venv/bin/python
VENV_STAMP := .venv/.installed
TOOLS := tools/bin
JAEGER_VERSION := v1.76.0

.PHONY: install compiled native system-deps protos test test-fast lint fmt bench jaeger kube spiffe-client dev-certs up down clean

# The venv. Nothing is compiled: lint, the fast tests, protos and dev certificates need no C
# compiler, and the sidecar runs its sources.
install: $(VENV_STAMP)

# The sidecar's hot path compiled with mypyc, and the HTTP/2 libraries under it with Cython, into
# build/compiled/ (rebuilt only when their sources changed; sidecar_tls/_compiled.py). Used when
# current, unless MESHWARD_INTERPRETED=1.
compiled: install
	@$(PY) -m sidecar_tls.hot_path

# The CA's mTLS port's transport (TLS, HTTP/2, gRPC framing) in Rust: native/ca_grpc into
# ca/_native_grpc.abi3.so, cargo's build cached in /var/cache/meshward/cargo-target.
native:
	@bash scripts/build_native.sh

# The distribution's CPython 3.11 when there is one: it is built with PGO/LTO (about twice as fast
# as a plain source build such as pyenv's here) and lives where the sidecar's uid 1337 can run it.
VENV_PYTHON := $(firstword $(wildcard /usr/bin/python3.11) python3.11)

$(VENV_STAMP): requirements.lock pyproject.toml
	$(VENV_PYTHON) -m venv .venv || python3.11 -m venv .venv
	.venv/bin/pip install -q --upgrade pip
	.venv/bin/pip install -q -r requirements.lock
	.venv/bin/pip install -q --no-deps -e .
	touch $(VENV_STAMP)

# OS tools the data path and its tests use (iptables, ip, nginx for the benchmark baseline).
system-deps:
	@bash scripts/install_system_deps.sh

protos: install
	$(PY) scripts/gen_protos.py

# Everything with the compiled hot path, then the sidecar's own tests once more on its sources.
test: compiled native system-deps kube spiffe-client
	$(PY) -m pytest -q
	MESHWARD_INTERPRETED=1 $(PY) -m pytest -q -m "not netns and not slow" tests/sidecar_tls

test-fast: install native
	MESHWARD_INTERPRETED=1 $(PY) -m pytest -q -m "not netns and not slow"

lint: install
	.venv/bin/ruff check .
	.venv/bin/ruff format --check .
	.venv/bin/mypy

fmt: install
	.venv/bin/ruff format .
	.venv/bin/ruff check --fix .

bench: compiled native system-deps
	$(PY) -m bench

# A real Jaeger v2, built from the Go module proxy into tools/bin (cached).
jaeger: $(TOOLS)/jaeger

$(TOOLS)/jaeger: tools/go.mod
	bash scripts/build_jaeger.sh $(JAEGER_VERSION)

# kube-apiserver, etcd, kube-controller-manager, kube-scheduler, kubectl v1.37.2 from the Go module
# proxy (tools/kube) into /var/cache/meshward/kube (or $$MESHWARD_KUBE_CACHE); nothing when cached.
kube:
	@bash scripts/build_kube.sh >/dev/null

# tools/bin/spiffeclient: an unmodified go-spiffe v2 client (tools/spiffe, from the Go module proxy)
# that the federation tests ask what go-spiffe makes of our Workload API and bundle endpoint (cached).
spiffe-client:
	@bash scripts/build_spiffe_client.sh

dev-certs: install
	.venv/bin/meshward ca dev-certs --out certs-dev

# `make up MESH=kubernetes`: the same mesh on a real API server (see README).
up:
	@bash scripts/mesh_up.sh up $(if $(filter kubernetes,$(MESH)),--kubernetes)

down:
	@bash scripts/mesh_up.sh down

clean:
	rm -rf .venv build *.egg-info .pytest_cache .mypy_cache .ruff_cache
