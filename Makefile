# Set-up is part of each target, so a fresh machine needs only `make app` or `make test`.
PYTHON ?= python3
# The lent GPU machine runs timm 1.0.29: the capture tests also run against it (tests/core/test_capture.py).
TIMM_GPU_VERSION := 1.0.29
TIMM_GPU_DIR := .cache/timm-$(TIMM_GPU_VERSION)

.PHONY: install install-test browser test check app

install:
	$(PYTHON) -m pip install -q -r requirements.txt
	$(PYTHON) -m pip install -q --no-deps -e .

install-test: install
	$(PYTHON) -m pip install -q -r requirements-test.txt
	test -d $(TIMM_GPU_DIR) || $(PYTHON) -m pip install -q --no-deps --target $(TIMM_GPU_DIR) timm==$(TIMM_GPU_VERSION)

# The browser test drives Debian's Chromium (Playwright's own browser download needs the internet).
browser:
	test -x /usr/bin/chromium || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium)

test: install-test browser
	$(PYTHON) -m pytest

# The fast tests, for the edit-test loop (a few minutes on 2 cores); `make test` is the whole suite CI runs.
check: install-test
	$(PYTHON) -m pytest -m "not slow"

app: install
	$(PYTHON) app.py
