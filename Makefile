# Every target creates the virtual environment first if it is missing.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
JUPYTER_ROOT_FLAG := $(if $(filter 0,$(shell id -u)),--allow-root,)

.PHONY: help install lab course test mutation outputs student clean

help:
	@echo "make course   run every notebook headless (papermill) into build/, with a summary"
	@echo "make test     run the whole test suite (unit tests, papermill and nbval over the notebooks)"
	@echo "make mutation mutation-test the library's core modules (long; MODULE=helpers/train/optim.py for one)"
	@echo "make lab      open the course in JupyterLab"
	@echo "make student  copies of the notebooks without solutions, into build/student"
	@echo "make outputs  re-execute the notebooks in the cpu profile and store their outputs in notebooks/"

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -c constraints.txt -e ".[dev]"
	touch $(STAMP)

lab: $(STAMP)
	@echo "JupyterLab is starting; open the URL it prints below (http://localhost:8888/lab?token=...)."
	$(PY) -m jupyter lab --no-browser $(JUPYTER_ROOT_FLAG) --notebook-dir=notebooks

course: $(STAMP)
	$(PY) -m helpers.course run

test: $(STAMP)
	COURSE_PROFILE=smoke COURSE_HEADLESS=1 OMP_NUM_THREADS=1 $(PY) -m pytest tests notebooks --nbval-lax -n 2 --dist loadfile

# Not part of `make test`: it runs each module's unit tests once per mutant (docs/mutation.md). Results are kept
# in mutants/, so a second run only tries what changed; MODULE=<path> reruns one module's mutants.
MUTATION_JOBS ?= 2
mutation: $(STAMP)
	COURSE_HEADLESS=1 OMP_NUM_THREADS=1 nice -n 10 $(PY) -m mutmut run --max-children $(MUTATION_JOBS) \
		$(if $(MODULE),"$(subst /,.,$(basename $(MODULE))).*")
	$(PY) tools/mutation_report.py $(MODULE)

outputs: $(STAMP)
	$(PY) -m helpers.course outputs

student: $(STAMP)
	$(PY) -m helpers.course student --out build/student

clean:
	rm -rf build
