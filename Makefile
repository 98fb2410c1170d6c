# Two commands set everything up (each idempotent, each creates .venv on first use):
#   make app    install, then serve the shipped model as a web page (Voila) on http://localhost:8866
#   make test   install, then lint and run the whole test suite (incl. slow and browser tests)
VENV   ?= .venv
PYTHON ?= python3
PY      = $(VENV)/bin/python
# The versions that trained the shipped model (export.pkl must be unpickled by the same ones).
# PyPI's Linux build of torch includes CUDA (GBs); for a CPU-only venv add the PyTorch CPU index:
#   make app TORCH_INDEX="--index-url https://download.pytorch.org/whl/cpu"
TORCH  ?= torch==2.14.1 torchvision==0.29.1
TORCH_INDEX ?=
PORT   ?= 8866

.PHONY: install app test lint bench clean-venv

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet $(TORCH_INDEX) $(TORCH)
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

install: $(VENV)/.installed

app: install
	$(VENV)/bin/whatsthat serve --port $(PORT)

lint: install
	$(VENV)/bin/ruff check .

# pytest exits 5 when it collects nothing: a missing suite must fail, not pass silently.
test: lint
	$(PY) -m pytest $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests" >&2; exit 1; fi; exit $$rc

bench: install
	$(PY) bench/run_all.py

clean-venv:
	rm -rf $(VENV)
