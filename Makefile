# Every target creates the virtual environment first if it is missing.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
BROWSER_STAMP := $(VENV)/.installed-browser
BUNDLE ?= build/workshop.bundle
JUPYTER_ROOT_FLAG := $(if $(filter 0,$(shell id -u)),--allow-root,)
# Quiet JupyterLab: warnings and the URL to open (logged as critical, so it still shows); kernels talk to the
# server over CurveZMQ-encrypted sockets, so no "running over TCP without encryption" warning per kernel.
LAB := $(PY) -m jupyter lab --no-browser $(JUPYTER_ROOT_FLAG) --ServerApp.log_level=WARN --LabApp.log_level=WARN \
	--MappingKernelManager.transport_encryption=auto

.PHONY: help install lab lab-student course test test-browser test-bundle outputs student site doctor bundle \
	install-bundle mutation clean

help:
	@echo "make course        run every notebook headless (papermill) into build/, with a summary"
	@echo "make test          run the whole test suite (unit tests, papermill and nbval over the notebooks)"
	@echo "make lab           open the course in JupyterLab"
	@echo "make student       student copies of the committed notebooks, without solutions, into notebooks/student"
	@echo "make lab-student   JupyterLab on the student copies only"
	@echo "make doctor        is this machine ready for the course? (one line per check, with the fix)"
	@echo "make site          the executed lessons as static HTML in build/site"
	@echo "make bundle        a workshop in one file for rooms without network ($(BUNDLE))"
	@echo "make install-bundle BUNDLE=FILE   set this machine up from a bundle, offline (needs only python3)"
	@echo "make test-browser  JupyterLab and the site in a real Chromium (Debian's chromium package)"
	@echo "make mutation      mutation-test the library's core modules (long; MODULE=helpers/train/optim.py for one)"
	@echo "make test-bundle   build a bundle and install it into a fresh venv with no index (GBs, minutes)"
	@echo "make outputs       re-execute the notebooks in the cpu profile and store their outputs in notebooks/"

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -c constraints.txt -e ".[dev]"
	touch $(STAMP)

$(BROWSER_STAMP): $(STAMP)
	$(PY) -m pip install --quiet --disable-pip-version-check -c constraints.txt -e ".[dev,browser]"
	touch $(BROWSER_STAMP)

lab: $(STAMP)
	$(LAB) --ServerApp.root_dir=notebooks

student: $(STAMP)
	$(PY) -m helpers.course student

lab-student: student
	$(LAB) --ServerApp.root_dir=notebooks/student

course: $(STAMP)
	$(PY) -m helpers.course run

test: $(STAMP)
	COURSE_PROFILE=smoke COURSE_HEADLESS=1 OMP_NUM_THREADS=1 $(PY) -m pytest tests notebooks --nbval-lax -n 2 --dist loadfile

test-browser: $(BROWSER_STAMP)
	$(PY) -m pytest tests/browser -v

test-bundle: $(STAMP)
	$(PY) -m pytest tests/install -v -s

# Not part of `make test`: it runs each module's unit tests once per mutant (docs/mutation.md). Results are kept
# in mutants/, so a second run only tries what changed; MODULE=<path> reruns one module's mutants.
MUTATION_JOBS ?= 2
mutation: $(STAMP)
	COURSE_HEADLESS=1 OMP_NUM_THREADS=1 nice -n 10 $(PY) -m mutmut run --max-children $(MUTATION_JOBS) \
		$(if $(MODULE),"$(subst /,.,$(basename $(MODULE))).*")
	$(PY) tools/mutation_report.py $(MODULE)

outputs: $(STAMP)
	$(PY) -m helpers.course outputs

site: $(STAMP)
	$(PY) -m helpers.course site

doctor: $(STAMP)
	$(PY) -m helpers.course doctor

bundle: $(STAMP)
	$(PY) -m helpers.course bundle --out $(BUNDLE)

# No $(STAMP) here: this is how a machine without network gets its environment.
install-bundle:
	$(PYTHON) helpers/course/bundle.py install $(BUNDLE) --venv $(VENV)

clean:
	rm -rf build
