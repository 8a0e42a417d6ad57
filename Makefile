GO ?= go
BIN := bin/meshd

.PHONY: build test e2e bench lab lab-down lint fuzz

build:
	CGO_ENABLED=0 $(GO) build -o $(BIN) ./meshd

# test: unit, in-process and fuzz smoke tests (the README's test command).
test: lint
	$(GO) test -race -count=1 ./...
	$(MAKE) fuzz

# fuzz: a few seconds of each fuzz target (the token parser, the FSM decoder).
fuzz:
	$(GO) test -run '^$$' -fuzz '^FuzzParse$$' -fuzztime 5s ./pkg/token
	$(GO) test -run '^$$' -fuzz '^FuzzDecode$$' -fuzztime 5s ./coordinator/fsm

e2e:
	@echo "network-namespace tests arrive with the peer agent"

# bench: every figure beside its same-run baseline; prints a table and
# merges the figures into bench/results.json.
bench:
	$(GO) run ./e2e/bench

lint:
	@test -z "$$(gofmt -l .)" || (echo "gofmt needed:"; gofmt -l .; exit 1)
	$(GO) vet ./...

# lab: the whole mesh in network namespaces on this machine (root, Linux,
# iproute2): 3 coordinators, site A with an HA gateway pair and a LAN host,
# site B with a gateway and a LAN host, two clients. State and logs in .lab/.
lab: build
	./scripts/deps.sh
	$(GO) run ./e2e/lab up $(BIN)

lab-down:
	$(GO) run ./e2e/lab down
