# kiln: set-up, tests and the demo. Every target installs what it needs first:
# a .venv (python3.11 -m venv), the pinned requirements.txt, and kiln itself
# (editable, no deps). A stamp file skips the install while requirements.txt and
# pyproject.toml are unchanged.
#
#   make demo    compile the bundled example; show speed-up and accuracy
#   make test    run the tests (pytest, 2 workers)
#   make lint    byte-compile everything; count lines per package
#   make clean   remove the venv and caches

PYTHON ?= python3.11
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.kiln-installed
PYTEST_ARGS ?= -n 2

.PHONY: all install test demo lint lines clean
.DELETE_ON_ERROR:

all: test

$(PY):
	$(PYTHON) -m venv $(VENV)

# torch==2.13.0 comes from the CPU wheel that pip's configured find-links provides.
$(STAMP): requirements.txt pyproject.toml | $(PY)
	$(PY) -m pip install --disable-pip-version-check -r requirements.txt
	$(PY) -m pip install --disable-pip-version-check --no-deps -e .
	touch $(STAMP)

install: $(STAMP)

# pytest's own exit status is make's: a failure, or exit 5 (no tests collected), fails.
test: $(STAMP)
	$(PY) -m pytest tests $(PYTEST_ARGS)

demo: $(STAMP)
	$(PY) examples/demo.py

lint: $(STAMP) lines
	$(PY) -m compileall -q -x '/(\.venv|build)/' .

lines:
	@for d in ir ir/ops frontend passes codegen runtime tests examples; do \
	  [ -d $$d ] && printf '%6s  %s\n' "$$(cat $$d/*.py 2>/dev/null | wc -l)" "$$d/*.py"; \
	done; true

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
