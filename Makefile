# Build, lint, test and SAM tooling. Needs only Python 3.11, make and network access to PyPI.
#
#   make demo          the whole system locally (embedded AWS) playing a scenario; exits 0 when it worked
#   make serve         the whole system locally until Ctrl-C (PORT=3000, OUTBOX=outbox)
#   make invoke        one function on one event: FN=<logical id> EVENT=events/<file>.json [ENDPOINT=url]
#   make replay-events SES event files into a running `make serve`: EVENTS="events/ses/...json" ENDPOINT=url [MESSAGE_ID=id] [NOW=1]
#   make test          virtualenv + ruff + mypy + cfn-lint + pytest -m "not slow", in parallel   (the test command)
#   make test-slow     the `slow` tests (large crash and scale runs), one at a time; CI runs it after `make test`
#   make test-fast     ruff + the unit tests (no mypy, cfn-lint or server process), under 90 s: the edit loop
#   make lint          the linters only
#   make bench         the benchmarks: python -m bench (bench/)
#   make sam-validate  sam validate --lint (SAM CLI in its own virtualenv, throwaway HOME)
#   make sam-build     sam build (no container: uses python3.11 from PATH)
#   make checkov       checkov on template.yaml and its SAM transform, with the reviewed skips in .checkov.yaml
#   make clean         remove virtualenvs, build output and caches

SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := test

# python3.11, or python3 when that is 3.11.
PYTHON ?= $(shell command -v python3.11 2>/dev/null || command -v python3 2>/dev/null)

VENV     := .venv
VENV_SAM := .venv-sam
VENV_CHECKOV := .venv-checkov
BIN      := $(VENV)/bin
SAM_BIN  := $(VENV_SAM)/bin
CHECKOV_BIN := $(VENV_CHECKOV)/bin
SAM_HOME := $(CURDIR)/.sam-home

# The SAM CLI runs with telemetry off, a throwaway HOME (nothing is written to the real one) and a
# region plus dummy credentials so it never goes looking for an AWS profile. Neither validate nor
# build calls AWS.
SAM_ENV := SAM_CLI_TELEMETRY=0 SAM_CLI_CONTACT_TELEMETRY=0 HOME=$(SAM_HOME) \
	AWS_DEFAULT_REGION=us-east-1 AWS_REGION=us-east-1 \
	AWS_ACCESS_KEY_ID=testing AWS_SECRET_ACCESS_KEY=testing AWS_SESSION_TOKEN=testing \
	AWS_CONFIG_FILE=$(SAM_HOME)/.aws/config AWS_SHARED_CREDENTIALS_FILE=$(SAM_HOME)/.aws/credentials
SAM := $(SAM_ENV) $(SAM_BIN)/sam

# -qq: errors only (pip's warnings about this machine's extra local indexes would drown the log).
PIP_FLAGS := --disable-pip-version-check -qq

say = @printf '\n==> %s\n' "$(1)"

.PHONY: venv venv-sam venv-checkov lint test test-slow test-fast bench demo serve invoke replay-events sam-validate sam-build \
	checkov clean check-python

check-python:
	@test -n "$(PYTHON)" || { echo "python3.11 not found on PATH" >&2; exit 1; }
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' \
		|| { echo "$(PYTHON) is not Python 3.11 (set PYTHON=/path/to/python3.11)" >&2; exit 1; }

# ------------------------------------------------------------------ virtualenvs
# The stamp files make the install re-run only when a requirements file changes.
# venv_rule(DIR, REQUIREMENTS...): DIR/.stamp, a virtualenv with the first requirements file installed.
define venv_rule
$(1)/.stamp: $(2) | check-python
	$$(call say,creating $(1) from $(firstword $(2)))
	@test -x $(1)/bin/python || $$(PYTHON) -m venv $(1)
	$(1)/bin/python -m pip install $$(PIP_FLAGS) -r $(firstword $(2))
	@touch $$@
endef

venv: $(VENV)/.stamp
venv-sam: $(VENV_SAM)/.stamp
venv-checkov: $(VENV_CHECKOV)/.stamp
$(eval $(call venv_rule,$(VENV),requirements-dev.txt layers/core/requirements.txt))
$(eval $(call venv_rule,$(VENV_SAM),requirements-sam.txt))
$(eval $(call venv_rule,$(VENV_CHECKOV),requirements-checkov.txt))

# ------------------------------------------------------------------ lint and test
lint: venv
	$(call say,ruff check)
	$(BIN)/ruff check .
	$(call say,ruff format --check)
	$(BIN)/ruff format --check .
	$(call say,mypy)
	$(BIN)/mypy
	$(call say,cfn-lint template.yaml)
	$(BIN)/cfn-lint template.yaml && echo "cfn-lint: no problems"

# Test tiers (pyproject.toml): every test is marked by its folder (unit, integration, concurrency,
# e2e, reliability); `slow` ones (minutes of scale or chaos) are left to test-slow. pytest-xdist runs
# the rest on WORKERS processes (auto: one per core; WORKERS=0 runs them in this process), each with
# its own embedded AWS, ports and temp dirs; then the e2e tests, one at a time: they hold the local
# runner to its pace in real time (10 sends a second across hand-offs), which a second busy worker
# on a two-core machine slows below. The slow tests run one at a time too: they use the real clock
# and kill processes, and want the machine to themselves.
WORKERS ?= auto
# pytest, ending without the interpreter's teardown (tests/run.py says why).
PYTEST  := $(BIN)/python -m tests.run

test: venv lint
	$(call say,pytest -m 'not slow and not e2e' -n $(WORKERS))
	$(PYTEST) -n $(WORKERS) -m "not slow and not e2e"
	$(call say,pytest tests/e2e -m 'not slow')
	$(PYTEST) tests/e2e -m "not slow"

test-slow: venv
	$(call say,pytest -m slow)
	$(PYTEST) -m slow

# The edit loop: ruff (no mypy or cfn-lint) and the unit tests, which start no server process. In
# this process: collecting tests/unit alone, once, takes less than xdist workers collecting it each.
test-fast: venv
	$(call say,ruff check + ruff format --check)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(call say,pytest tests/unit -m 'not slow')
	$(PYTEST) tests/unit -m "not slow"

bench: venv
	$(BIN)/python -m bench

# ------------------------------------------------------------------ local runner (no AWS, no Docker)
PORT   ?= 3000
OUTBOX ?= outbox

demo: venv
	$(call say,make demo: the local runner plays a scenario through the HTTP API)
	$(BIN)/python -m local_runner demo --port $(PORT) --outbox $(OUTBOX)

serve: venv
	$(BIN)/python -m local_runner serve --port $(PORT) --outbox $(OUTBOX)

invoke: venv
	@test -n "$(FN)" && test -n "$(EVENT)" || { \
		echo "usage: make invoke FN=<function logical id> EVENT=events/<file>.json [ENDPOINT=http://127.0.0.1:<port>]" >&2; exit 2; }
	$(BIN)/python -m local_runner invoke $(FN) $(EVENT) $(if $(ENDPOINT),--endpoint $(ENDPOINT))

replay-events: venv
	@test -n "$(EVENTS)" && test -n "$(ENDPOINT)" || { \
		echo "usage: make replay-events EVENTS=\"events/ses/<file>.json ...\" ENDPOINT=http://127.0.0.1:<port> [MESSAGE_ID=<ses message id>] [NOW=1]" >&2; exit 2; }
	$(BIN)/python -m local_runner replay-events $(EVENTS) --endpoint $(ENDPOINT) $(if $(MESSAGE_ID),--message-id $(MESSAGE_ID)) $(if $(NOW),--now)

# ------------------------------------------------------------------ SAM
sam-validate: venv-sam
	$(call say,sam validate --lint)
	@mkdir -p $(SAM_HOME)
	@echo 'sam validate --lint --template-file template.yaml'
	@$(SAM) validate --lint --template-file template.yaml

sam-build: venv-sam
	$(call say,sam build)
	@mkdir -p $(SAM_HOME)
	@echo 'sam build --template-file template.yaml'
	@$(SAM) build --template-file template.yaml

# ------------------------------------------------------------------ checkov
# Twice: the template as written (SAM's own resources, with Globals) and as CloudFormation receives
# it after the SAM transform, where the IAM policies SAM generates from `Policies` are visible.
# Offline; fails on any finding not skipped, with its reason, in .checkov.yaml.
CHECKOV := $(CHECKOV_BIN)/checkov --config-file .checkov.yaml
CHECKOV_TRANSFORMED := .aws-sam/checkov/template.json

checkov: venv-checkov
	$(call say,checkov template.yaml)
	$(CHECKOV) --file template.yaml
	$(call say,checkov template.yaml after the SAM transform)
	@mkdir -p $(dir $(CHECKOV_TRANSFORMED))
	$(CHECKOV_BIN)/python .ci/sam_transform.py template.yaml $(CHECKOV_TRANSFORMED)
	$(CHECKOV) --file $(CHECKOV_TRANSFORMED)

# ------------------------------------------------------------------ housekeeping
clean:
	rm -rf $(VENV) $(VENV_SAM) $(VENV_CHECKOV) .aws-sam .sam-home .mypy_cache .pytest_cache .ruff_cache
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
