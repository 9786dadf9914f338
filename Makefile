# sockgate: `make demo` and `make test` do all the set-up on a fresh machine.
VENV   ?= .venv
PY     := $(VENV)/bin/python
APT_PACKAGES := systemd tcpd nmap iproute2 nftables socat haproxy xinetd iperf3 procps openssl crowdsec fail2ban sshguard dnsmasq-base dropbear-bin
# crowdsec's postinst registers with CrowdSec's online API unless this file exists and is not
# empty before the install; only the package registries are reachable, so it must exist first.
CROWDSEC_CAPI := /etc/crowdsec/online_api_credentials.yaml

.PHONY: setup system-packages demo test lint bench clean

$(PY):
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

# Python dependencies come from pyproject.toml (the project and its `test` extra, which takes in
# the `top` extra (textual, for `sockgate top` and its tests) and the `bench` extra (matplotlib)).
setup: $(PY) system-packages
	$(PY) -m pip install -q -e '.[test]'

# Debian packages the kernel tests use as oracles and peers (tcpdmatch, nmap, ss, nft, fail2ban-regex,
# dnsmasq as a real resolver on loopback, dropbear as a real daemon that does not link libwrap...).
# dropbear-bin is the server binary alone (no init script, no unit: `dropbear`/`dropbear-run`
# would start a server on port 22); the policy-rc.d below keeps any other packaged daemon down.
# Installed only when missing, and only when we may (root with apt-get); under CI a package
# that cannot be installed stops the run, and tests/support/strict_ci.py fails any skip.
system-packages:
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing:$$missing"; \
	    case " $$missing " in *" crowdsec "*) \
	      if [ ! -s $(CROWDSEC_CAPI) ]; then mkdir -p $$(dirname $(CROWDSEC_CAPI)); \
	        echo "# no online API: sockgate's tests run their own Local API offline" > $(CROWDSEC_CAPI); fi;; \
	    esac; \
	    rcd=""; if [ ! -e /usr/sbin/policy-rc.d ]; then rcd=/usr/sbin/policy-rc.d; \
	      printf '#!/bin/sh\n# sockgate setup: packaged daemons are not started by their install\nexit 101\n' > $$rcd; chmod 755 $$rcd; fi; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	    rc=$$?; [ -z "$$rcd" ] || rm -f $$rcd; [ $$rc = 0 ] || exit $$rc; \
	  elif [ -n "$$CI" ]; then echo "missing Debian packages:$$missing, and no root with apt-get to install them" >&2; exit 1; \
	  else echo "missing Debian packages:$$missing (kernel tests that need them will skip; under CI they fail)"; fi; \
	fi
	@# The packaged daemons are not part of the tests (they start their own, on ports of their own):
	@# where systemd runs, stop them and keep them from starting at boot.
	@if [ "$$(id -u)" = 0 ] && [ -d /run/systemd/system ]; then \
	  for u in crowdsec fail2ban sshguard; do systemctl disable --now $$u.service >/dev/null 2>&1 || true; done; \
	fi

demo: setup
	$(VENV)/bin/sockgate demo

test: setup
	$(PY) -m pytest -q

lint: setup
	$(PY) -m mypy

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info .pytest_cache .hypothesis src/sockgate/proxy/*.so
