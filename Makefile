# One command to set up and run, one to set up and test (Debian 12, as root).
VENV := .venv
PY := $(VENV)/bin/python
APT_PKGS := python3 python3-venv python3-bpfcc bpfcc-tools bpftool linux-headers-amd64 iproute2 tmux procps libcap2-bin

.PHONY: run test setup deps venv lint bench test-compat clean

run: setup
	$(VENV)/bin/tcpq-top $(ARGS)

test: setup
	bash tests/run.sh

setup: deps venv

deps:
	@missing=""; for p in $(APT_PKGS); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q $$missing; \
	fi

# /usr/bin/python3 is Debian's, the only one that has bcc (python3-bpfcc).
venv: $(VENV)/.done

$(VENV)/.done: pyproject.toml
	/usr/bin/python3 -m venv --system-site-packages $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $@

lint: setup
	$(VENV)/bin/ruff check tcptop_q tests bench
	$(VENV)/bin/mypy tcptop_q

bench: setup
	$(PY) bench/run_all.py

test-compat: setup
	bash tests/compat/run-vm.sh

clean:
	rm -rf $(VENV) build *.egg-info
