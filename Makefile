# Everything runs inside .venv, built from a fresh clone by the first target that needs it.
PY      := .venv/bin/python
PIP     := .venv/bin/pip
STAMP   := .venv/.installed

.PHONY: demo test bench lint clean

$(STAMP): pyproject.toml
	python3 -m venv .venv
	$(PIP) install -q --upgrade pip
	# the CPU build of torch that lies on disk; must come before anything that depends on torch
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e '.[bench,test,serve]'
	touch $(STAMP)

demo: $(STAMP)
	$(PY) scripts/demo.py

test: $(STAMP)
	$(PY) -m pytest -q tests

bench: $(STAMP)
	.venv/bin/turboseq bench --out bench-out

clean:
	rm -rf .venv bench-out
