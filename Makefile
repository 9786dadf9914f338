# sockgate: `make demo` and `make test` do all the set-up on a fresh machine.
VENV   ?= .venv
PY     := $(VENV)/bin/python
APT_PACKAGES := tcpd nmap iproute2 nftables socat haproxy xinetd iperf3 procps fail2ban

.PHONY: setup system-packages demo test lint bench clean

$(PY):
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

# Python dependencies come from pyproject.toml (the project and its `test` extra).
setup: $(PY) system-packages
	$(PY) -m pip install -q -e '.[test]'

# Debian packages the kernel tests use as oracles and peers (tcpdmatch, nmap, ss, nft, fail2ban-regex...).
# Installed only when missing, and only when we may (root with apt-get); under CI a package
# that cannot be installed stops the run, and tests/support/strict_ci.py fails any skip.
system-packages:
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing:$$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	  elif [ -n "$$CI" ]; then echo "missing Debian packages:$$missing, and no root with apt-get to install them" >&2; exit 1; \
	  else echo "missing Debian packages:$$missing (kernel tests that need them will skip; under CI they fail)"; fi; \
	fi

demo: setup
	$(VENV)/bin/sockgate demo

test: setup
	$(PY) -m pytest -q

lint: setup
	$(PY) -m mypy

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info .pytest_cache .hypothesis
