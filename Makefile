# Two entry points (see README): `make demo` runs the main job, `make test` the tests.
# Both create .venv on first use; torch is pinned first so pip takes the CPU build.
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_PIN := torch==2.13.0
APT_PACKAGES := espeak-ng libportaudio2 alsa-utils chromium

.PHONY: demo test system-deps install clean

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH_PIN)
	$(PY) -m pip install -q -e '.[test]'
	touch $@

install: $(VENV)/.installed

# espeak-ng (synthetic corpus), PortAudio and ALSA (microphone path), Chromium (the
# `kws serve` page's end-to-end test, over the DevTools protocol) come from apt.
system-deps:
	@command -v espeak-ng >/dev/null && command -v aplay >/dev/null && command -v chromium >/dev/null \
	  && ldconfig -p | grep -q libportaudio \
	  || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(APT_PACKAGES))

demo: $(VENV)/.installed
	$(VENV)/bin/kws demo

test: system-deps $(VENV)/.installed
	$(PY) -m pytest -q

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
