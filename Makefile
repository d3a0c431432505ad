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

.PHONY: help setup setup-bench os-packages demo test lint unit molecule sandbox-down clean

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

test: setup lint unit molecule ## Run every check: linters, unit tests, molecule scenarios
	@echo "make test: PASSED (linters, unit tests, every molecule scenario on real machines)"

lint: setup ## ruff, yamllint, ansible-lint (production profile)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/yamllint --strict .
	$(BIN)/ansible-lint --nocolor

unit: setup-bench ## Unit tests of modules, module_utils and bench/
	$(BIN)/pytest tests/unit

molecule: setup ## Every molecule scenario, on real sandbox machines
	$(BIN)/molecule test --all

sandbox-down: setup ## Tear the sandbox fleet down
	$(BIN)/ansible-playbook playbooks/sandbox.yml -e sandbox_state=absent

clean: ## Remove the virtualenv and caches (not the sandbox; see sandbox-down)
	rm -rf $(VENV) .pytest_cache .ruff_cache
