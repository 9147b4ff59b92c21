# Build a GPT — every target sets up what it needs (a .venv with the tested versions) by itself.
#   make book   build the rendered book into _build/html, executing every chapter (cpu profile)
#   make test   the whole test suite: unit tests, export sync, student versions, grading, the
#               book build (every notebook executed afresh, smoke) with warnings as errors, a browser check
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# Offline mirrors: used when a ../shared folder (or the variables) provide them.
SHARED ?= $(abspath ../shared)
ifneq ($(wildcard $(SHARED)/data),)
export GPTLIB_DATA_DIR ?= $(SHARED)/data
endif
ifneq ($(wildcard $(SHARED)/tiktoken-cache),)
export TIKTOKEN_CACHE_DIR ?= $(SHARED)/tiktoken-cache
endif
export PYDEVD_DISABLE_FILE_VALIDATION := 1
JB_FLAGS := -W -n --keep-going
NOTEBOOKS := $(wildcard notebooks/*.ipynb)

.PHONY: help setup book book-smoke test test-unit test-notebooks test-book test-browser export \
        student grade autograder lab bench configure clean

help:
	@sed -n '1,5p' Makefile

# The tested versions: requirements.txt names what we use, constraints.txt pins every version.
$(STAMP): requirements.txt constraints.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt -c constraints.txt
	touch $@

setup: $(STAMP)

# The book, executed in the cpu profile (results worth reading). Executed notebooks are cached
# per profile (jupyter-cache keys on the code only), so a smoke build never feeds `make book`.
PROFILE_FOR_BOOK = $${GPTLIB_PROFILE:-cpu}
book: $(STAMP)
	@mkdir -p _build
	profile=$(PROFILE_FOR_BOOK); \
	sed -e "s#_build/.jupyter_cache#_build/.jupyter_cache/$$profile#" \
	    -e "s#offline_mathjax: tools/#offline_mathjax: $(CURDIR)/tools/#" _config.yml > _build/_config.book.yml && \
	GPTLIB_PROFILE=$$profile $(VENV)/bin/jupyter-book build . $(JB_FLAGS) --config _build/_config.book.yml
	@echo "Open _build/html/index.html"

# The same book in the smoke profile, into _build/smoke (what `make test` checks). Every notebook is
# executed afresh (no cache: the cache keys on a notebook's code, not on gptlib's), and a cell that
# raises fails the build (allow_errors: false, -W), so this is also the notebooks' execution test.
book-smoke: $(STAMP)
	@mkdir -p _build/smoke
	sed -e 's#_build/.jupyter_cache#_build/smoke/.jupyter_cache#' \
	    -e 's#execute_notebooks: cache#execute_notebooks: force#' \
	    -e 's#offline_mathjax: tools/#offline_mathjax: $(CURDIR)/tools/#' _config.yml > _build/smoke/_config.yml
	GPTLIB_PROFILE=smoke $(VENV)/bin/jupyter-book build . $(JB_FLAGS) \
	    --config _build/smoke/_config.yml --path-output _build/smoke

test: export OMP_NUM_THREADS ?= 1
test: $(STAMP)
	$(MAKE) --no-print-directory test-unit test-book test-browser

test-unit: $(STAMP)
	GPTLIB_PROFILE=smoke $(PY) -m pytest -q tests --ignore=tests/browser

# nbval on every notebook: not part of `make test` (the smoke book build executes each notebook
# once already); for one chapter at a time, and for the gpu profile on a GPU machine.
test-notebooks: $(STAMP)
	GPTLIB_PROFILE=smoke $(PY) -m pytest -q --nbval-lax -p no:cacheprovider $(NOTEBOOKS)

test-book: book-smoke

test-browser: $(STAMP)
	BOOK_HTML=_build/smoke/_build/html $(PY) -m pytest -q tests/browser

export: $(STAMP)
	$(PY) -m tools.export

student: $(STAMP)
	$(PY) -m tools.student --out _build/student

# Grade submitted notebooks (CHAPTER=N grades them all as that chapter, whatever their metadata).
grade: $(STAMP)
	@test -n "$(SUBMISSIONS)" || (echo "usage: make grade SUBMISSIONS='path/to/*.ipynb' [CHAPTER=N]"; exit 2)
	$(PY) -m tools.grade $(SUBMISSIONS) --out _build/gradebook $(if $(CHAPTER),--chapter $(CHAPTER))

# A Gradescope autograder bundle running the same grader: _build/autograder/autograder.zip.
autograder: $(STAMP)
	$(PY) -m tools.autograder --out _build/autograder $(if $(CHAPTER),--chapter $(CHAPTER))

# JupyterLab with jupyterlab-myst (in requirements.txt), so the notebooks' MyST renders there.
lab: $(STAMP)
	$(VENV)/bin/jupyter lab notebooks

bench: $(STAMP)
	for b in benchmarks/[a-z]*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

configure: $(STAMP)
	@test -n "$(REPO)" || (echo "usage: make configure REPO=https://github.com/you/your-fork [BRANCH=main]"; exit 2)
	$(PY) -m tools.course configure $(REPO) $(BRANCH)

clean:
	rm -rf _build
