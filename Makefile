# Everything runs inside .venv, built from a fresh clone by the first target that needs it.
SHELL   := /bin/bash
PY      := .venv/bin/python
PIP     := .venv/bin/pip
STAMP   := .venv/.installed

.PHONY: demo test bench lint format clean system-deps docs

$(STAMP): pyproject.toml
	python3 -m venv .venv
	$(PIP) install -q --upgrade pip
	# the CPU build of torch that lies on disk; must come before anything that depends on torch
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e '.[bench,test,serve,lint,ray,docs]'
	touch $(STAMP)

# espeak-ng synthesizes the speech that Whisper tests, bench and demo transcribe; Chromium and its driver run the
# playground's browser tests (Debian packages)
system-deps:
	@command -v espeak-ng >/dev/null && command -v chromium >/dev/null && command -v chromedriver >/dev/null || { \
		echo "installing espeak-ng, chromium and chromium-driver (apt-get)"; \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq espeak-ng chromium chromium-driver >/dev/null; }

demo: $(STAMP) system-deps
	$(PY) scripts/demo.py

# ruff (lint and format) and the import-linter contract of the layers (pyproject.toml)
lint: $(STAMP)
	.venv/bin/ruff check src tests scripts
	.venv/bin/ruff format --check src tests scripts
	.venv/bin/lint-imports --no-cache

format: $(STAMP)
	.venv/bin/ruff check --fix src tests scripts
	.venv/bin/ruff format src tests scripts

# the documentation site (docs/, mkdocs-material); --strict: a broken link or a page missing from nav fails
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 .venv/bin/mkdocs build --strict --site-dir site 2>&1 | grep -v '^INFO' ; exit $${PIPESTATUS[0]}

# two workers, one test file each at a time (--dist loadfile keeps a file's module fixtures in one process); each
# worker runs torch on one thread (tests/conftest.py), so the two share the cores instead of fighting for them.
# The tests that assert wall-clock bounds (marked `pace`) run after them, alone on the machine
test: lint docs system-deps
	$(PY) -m pytest -q -n 2 --dist loadfile -m "not pace" --durations=25 tests
	$(PY) -m pytest -q -m pace --durations=10 tests

bench: $(STAMP) system-deps
	.venv/bin/turboseq bench --out bench-out

clean:
	rm -rf .venv bench-out site
