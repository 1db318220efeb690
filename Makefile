# Two commands do everything on a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: run test bench bench-big chaos mutate clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

run: $(STAMP) ## the bot on the embedded stack (Temporal dev server + worker + HTTP)
	$(BIN)/playbook-bot dev

test: $(STAMP) ## policy tests, then the whole suite (real Temporal dev server, no mocks of it)
	$(BIN)/playbook-bot policy test
	# Four processes, a module to each at a time: the suite mostly waits on Temporal and
	# subprocesses, so four overlap their waits on 2 cores (three used 1.5 of them and took
	# 8.3 minutes, four 7.2); each has its own dev server.
	$(BIN)/python -m pytest -q -p no:cacheprovider -n 4 --dist loadfile --durations=15

bench: $(STAMP) ## every figure of bench/results.md, the bot as its processes vs floors measured in the same run (not timed tests)
	$(BIN)/python -m pip install -q -e '.[dev,bench]'
	rm -f bench/results.json bench/samples.json
	$(BIN)/python -m bench.alert_storm
	$(BIN)/python -m bench.alert_storm --audit postgresql
	$(BIN)/python -m bench.alert_storm --shape dev
	$(BIN)/python -m bench.slack_ack
	$(BIN)/python -m bench.overhead
	$(BIN)/python -m bench.policy_latency
	$(BIN)/python -m bench.approval_rss
	$(BIN)/python -m bench.latency
	$(BIN)/python -m bench.results
	cat bench/results.md
	$(BIN)/python -m bench.foreach
	$(BIN)/python -m bench.foreach_history
	$(BIN)/python -m bench.audit_append

bench-big: $(STAMP) ## the 10,000-run memory figure (long: tens of minutes on 2 cores), into bench/results.md
	$(BIN)/python -m pip install -q -e '.[dev,bench]'
	$(BIN)/python -m bench.approval_rss --big
	cat bench/results.md

chaos: $(STAMP) ## the slow half of the suite: big storms, long fuzzing, repeated crashes, the reload race, orphaned servers
	$(BIN)/python -m pytest -q -p no:cacheprovider -m chaos tests

mutate: $(STAMP) ## mutation testing of the engine, receiver, approvals and policy base (slow; bench/mutation.md)
	$(BIN)/python -m pip install -q 'mutmut>=2.5,<3' 'whatthepatch>=1.0'
	$(BIN)/python -m bench.mutate

clean:
	rm -rf $(VENV) .data .pytest_cache
