# Conveniences over ./setup.sh (which needs nothing but bash on a fresh Debian 12).
.PHONY: run test deps lint bench test-compat
run:
	./setup.sh run $(ARGS)
test:
	./setup.sh test
deps:
	./setup.sh deps
lint: deps
	.venv/bin/ruff check tcptop_q tests bench
	.venv/bin/mypy tcptop_q
bench: deps
	.venv/bin/python bench/diag_parse.py
# make test-compat [KERNEL=6.1|5.10] [ARGS=pytest args]: both guests by default (docs/COMPATIBILITY.md)
test-compat: deps
	KERNEL='$(KERNEL)' bash tests/compat/run-vm.sh $(ARGS)
