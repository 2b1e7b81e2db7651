# Each target creates the environment it needs (.venv, with the dev extra: lab + test + ruff) if missing.
#   make lab          JupyterLab on the course
#   make course       run every solution notebook headless under COURSE_PROFILE -> build/ (offline HTML too)
#   make test         unit tests + every notebook (solutions and student versions) under nbval
#   make test-online  the tests that need the real internet (GPT-2 124M, CIFAR-10, PyPI)
#   make hooks        install the pre-commit hooks (ruff, assignments check) into .git/hooks
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# This machine's pip finds these wheels locally; elsewhere override, e.g. for a CPU-only laptop:
#   make test TORCH_SPEC="torch torchvision --index-url https://download.pytorch.org/whl/cpu"
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
STAMP := $(VENV)/.installed
COURSE_PROFILE ?= smoke
# one worker per core, one thread per worker: 2 workers x 2 threads would oversubscribe 2 cores
JOBS ?= 2

.PHONY: env lab course test test-online student check lint hooks clean

env: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet $(TORCH_SPEC)
	$(PY) -m pip install --quiet -e ".[dev]"
	$(PY) -c "import torch, course_lib; print('environment ready: torch', torch.__version__)"
	touch $(STAMP)

# Jupyter refuses to run as root (containers, some cloud VMs) unless told it may.
LAB_ARGS ?= $(if $(filter 0,$(shell id -u)),--allow-root,)

lab: $(STAMP)
	$(VENV)/bin/jupyter lab $(LAB_ARGS)

course: $(STAMP)
	$(PY) benchmarks/run_notebooks.py --out build

# the notebooks' results.record calls go to build/test-results, never into make course's table;
# each notebook's last cell fails when a smoke metric that is deterministic leaves its band (course_lib/expected.json);
# the venv's bin/ first on PATH, as if activated: tools the tests run call its commands (nbgrader -> alembic)
test: $(STAMP)
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" COURSE_PROFILE=$(COURSE_PROFILE) OMP_NUM_THREADS=$${OMP_NUM_THREADS:-1} \
	  COURSE_RESULTS_DIR=$${COURSE_RESULTS_DIR:-$(CURDIR)/build/test-results} \
	  COURSE_EXPECTED_STRICT=$${COURSE_EXPECTED_STRICT:-deterministic} \
	  $(PY) -m pytest -n $(JOBS) --dist loadscope --nbval-lax \
	  --nbval-cell-timeout=600 -p no:cacheprovider tests solutions notebooks

test-online: $(STAMP)
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" COURSE_PROFILE=$(COURSE_PROFILE) $(PY) -m pytest -m online -p no:cacheprovider tests

student: $(STAMP)
	$(PY) -m course_lib.assignments build

check: $(STAMP)
	$(PY) -m course_lib.assignments check

lint: $(STAMP)
	$(VENV)/bin/ruff check course_lib tests benchmarks scripts

hooks: $(STAMP)
	$(VENV)/bin/pre-commit install

clean:
	rm -rf build .pytest_cache
