# Two commands set everything up (each idempotent, each creates .venv on first use):
#   make app    install the serving environment (.venv-serve), then serve the shipped model as a web page
#               (Voila) on http://localhost:8866
#   make test   install both environments, then lint and run the whole test suite (incl. slow and browser tests)
# Versions come from one place: requirements/dev.lock (this venv) and requirements.txt (the dyno),
# both written by `make lock` from requirements/*.in. See docs/development.md, "Versions and the lock".
VENV   ?= .venv
PYTHON ?= python3
PY      = $(VENV)/bin/python
LOCK    = requirements/dev.lock
PORT   ?= 8866
# The dyno's environment, built from requirements.txt as Heroku builds it (CPU torch, no fastai): the
# browser tests serve the page from it, so what is deployed is what is tested.
SERVE_VENV ?= .venv-serve

.PHONY: install serve-env app disk-check test test-fast lint lock bench clean-venv

# Rebuilt when the lock changes; `tools/lock.py sync` installs exactly the lock (pip, torch and all),
# removes what it does not list, installs whatsthat editable and runs `pip check`.
$(VENV)/.installed: $(LOCK) pyproject.toml
	$(PYTHON) tools/lock.py check
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PYTHON) tools/lock.py sync $(VENV)
	touch $@

install: $(VENV)/.installed

# Rebuilt when the serving lock or the package changes (whatsthat is installed non-editable, as on a dyno):
# any file of it, the page's templates and scripts too.
$(SERVE_VENV)/.installed: requirements.txt pyproject.toml $(shell find whatsthat -type f -not -path '*/__pycache__/*')
	$(PYTHON) tools/lock.py serve $(SERVE_VENV)
	touch $@

serve-env: $(SERVE_VENV)/.installed

# The page needs only the serving environment (CPU torch, no fastai: about 1 GB, not the 6.6 GB of .venv):
# the shipped model is served exactly as a dyno serves it.
app: serve-env
	$(SERVE_VENV)/bin/whatsthat serve --port $(PORT)

lint: install
	$(VENV)/bin/ruff check .

# Before anything is installed: stop with the numbers where the disk has no room for .venv, .venv-serve and
# the tests' temp files (a shared CI disk once ran out mid-suite: hundreds of errors, no clear cause).
disk-check:
	VENV=$(VENV) SERVE_VENV=$(SERVE_VENV) bash .ci/ensure-disk

# pytest exits 5 when it collects nothing: a missing suite must fail, not pass silently. Browser tests
# must run: Chromium is installed first where we may, and a missing browser fails them instead of skipping.
# So must the flags tests against a real PostgreSQL server: installed first the same way.
test: disk-check lint serve-env
	bash .ci/ensure-chromium && bash .ci/ensure-postgres && bash .ci/ensure-axe
	WHATSTHAT_BROWSER_TESTS=required WHATSTHAT_POSTGRES_TESTS=required WHATSTHAT_SERVE_VENV=$(abspath $(SERVE_VENV)) $(PY) -m pytest $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests" >&2; exit 1; fi; exit $$rc

# Everything but the slow (training, notebooks) and browser tests: seconds, for the edit-test loop.
test-fast: lint
	$(PY) -m pytest -m "not slow and not browser" $(PYTEST_ARGS)

# Re-resolve requirements/*.in with today's releases, rewrite the locks and say what changed.
lock:
	$(PYTHON) tools/lock.py lock

bench: install
	$(PY) bench/run_all.py

clean-venv:
	rm -rf $(VENV) $(SERVE_VENV)
