# flipback: the two commands of the README are `make demo` and `make test`.
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

VENV := .venv
BIN := $(VENV)/bin
# Controller packages: the sandbox (debootstrap, systemd-nspawn, iproute2), SSH and venv.
APT_PACKAGES := debootstrap systemd-container iproute2 openssh-client python3-venv git make procps
export PATH := $(CURDIR)/$(BIN):$(PATH)
export ANSIBLE_FORCE_COLOR ?= $(if $(CI),0,1)

.PHONY: help setup setup-bench os-packages demo test lint unit sanity molecule collection sandbox-down clean

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-13s %s\n", $$1, $$2}'

setup: os-packages $(VENV)/.installed ## Install OS packages (if missing), then the .venv from pyproject.toml

# First: the venv below needs python3-venv.
os-packages:
	@missing=""; for p in $(APT_PACKAGES); do \
	  dpkg-query -W -f='$${Status}' "$$p" 2>/dev/null | grep -q "ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  if [ "$$(id -u)" != 0 ]; then echo "make setup needs root to install:$$missing" >&2; exit 1; fi; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	fi

$(VENV)/.installed: pyproject.toml | os-packages
	@test -x $(BIN)/python || python3 -m venv $(VENV)
	@echo "setup: installing the pinned packages of pyproject.toml into $(VENV)" \
	  "(the first time 2-3 minutes, from PyPI; later runs only what changed)"
	@$(BIN)/python -c 'import tomllib; print("\n".join(tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]))' > $(VENV)/requirements.txt
	@$(BIN)/pip install --quiet --disable-pip-version-check -r $(VENV)/requirements.txt
	@touch $@

setup-bench: setup $(VENV)/.installed-bench ## `make setup`, then the bench extra (matplotlib) for bench/ and its unit tests

$(VENV)/.installed-bench: pyproject.toml $(VENV)/.installed
	@$(BIN)/python -c 'import tomllib; print("\n".join(tomllib.load(open("pyproject.toml", "rb"))["project"]["optional-dependencies"]["bench"]))' > $(VENV)/requirements-bench.txt
	$(BIN)/pip install --quiet --disable-pip-version-check -r $(VENV)/requirements-bench.txt
	@touch $@

# The demo's second source: a throwaway repository of hello with tags v1, v2, broken.
DEMO_REPO ?= /var/tmp/flipback-demo-repo
# The demo's last status, from which it prints the commands to try next.
DEMO_STATUS ?= /var/tmp/flipback-demo-status.json

demo: setup ## Sandbox up, deploy hello and greeter, hello v2, roll back, status; what to try next
	$(BIN)/ansible-playbook playbooks/sandbox.yml
	$(BIN)/ansible all -m ansible.builtin.ping
	@echo "== deploy every service from this repository's HEAD"
	$(BIN)/ansible-playbook playbooks/deploy.yml
	@echo "== deploy hello v2 from a second repository"
	$(BIN)/python tests/fixtures/service_repo.py $(DEMO_REPO)
	$(BIN)/ansible-playbook playbooks/deploy.yml -e service=hello -e source=$(DEMO_REPO) -e ref=v2
	$(BIN)/ansible-playbook playbooks/health.yml
	@echo "== roll hello back to its previous good release"
	$(BIN)/ansible-playbook playbooks/rollback.yml -e service=hello
	$(BIN)/ansible-playbook playbooks/health.yml
	$(BIN)/ansible-playbook playbooks/status.yml -e status_json=$(DEMO_STATUS)
	@$(BIN)/python sandbox/demo_next.py $(DEMO_STATUS)

# Linters, unit tests and sanity two at a time (each mostly uses one core; the output of
# each is printed when it ends), before the scenarios, whose load tests need the cores.
test: setup ## Run every check: linters, unit tests, ansible-test sanity, molecule
	$(MAKE) --no-print-directory -j2 --output-sync=target sanity lint unit
	$(MAKE) --no-print-directory molecule
	@echo "make test: PASSED (linters, unit tests, ansible-test sanity, every molecule scenario on real machines)"

lint: setup ## ruff, yamllint, ansible-lint (production profile)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/yamllint --strict .
	$(BIN)/ansible-lint --nocolor

unit: setup-bench ## Unit tests of modules, module_utils and bench/
	$(BIN)/pytest tests/unit

# COLLECTION_GIT=<repository>,<branch> also commits it as that branch, for git installs.
collection: setup ## Build the collection flipback.flipback: build/flipback-flipback-<version>.tar.gz
	$(BIN)/python collection/build.py --out build $(if $(COLLECTION_GIT),--git $(COLLECTION_GIT))

# ansible-test wants the collection at ansible_collections/<namespace>/<name>/, outside
# this git work tree (inside it, ansible-test lists files with git, and build/ is
# ignored). It makes its virtualenvs with a pip bootstrap script from a host this
# network may not reach: collection/get_pip.py stands in for it unless one is cached.
ANSIBLE_TEST_CACHE := $(HOME)/.ansible/test/cache
SANITY_OUT ?= $(or $(TMPDIR),/tmp)/flipback-sanity
SANITY_TREE := $(SANITY_OUT)/collection/ansible_collections/flipback/flipback

sanity: setup ## ansible-test sanity on the built collection (no containers; requirements from PyPI)
	@mkdir -p $(ANSIBLE_TEST_CACHE)
	@test -e $(ANSIBLE_TEST_CACHE)/get_pip_24_2.py || cp collection/get_pip.py $(ANSIBLE_TEST_CACHE)/get_pip_24_2.py
	$(BIN)/python collection/build.py --out $(SANITY_OUT) >/dev/null
	cd $(SANITY_TREE) && $(CURDIR)/$(BIN)/ansible-test sanity --venv --python 3.11 --requirements --color no


# Scenarios side by side: each has its own fleet and subnet. MOLECULE_LANES=1 runs them
# one at a time; `molecule test -s <scenario>` runs one.
MOLECULE_LANES ?= 2

molecule: setup ## Every molecule scenario, on real sandbox machines (2 at a time)
	tests/molecule-lanes $(MOLECULE_LANES)

sandbox-down: setup ## Tear the sandbox fleet down
	$(BIN)/ansible-playbook playbooks/sandbox.yml -e sandbox_state=absent

clean: ## Remove the virtualenv, caches and build/ (not the sandbox; see sandbox-down)
	rm -rf $(VENV) .pytest_cache .ruff_cache build
