GO ?= go
BIN := bin/meshd

.PHONY: build test e2e soak chaos bench bench-scale lab lab-down lab-docker lab-docker-check lab-docker-down lab-docker-bin lint fuzz

# VERSION names the build (meshd version; coordinators record it for the
# feature gate and cluster versions).
VERSION ?= $(shell git describe --always --dirty 2>/dev/null || echo devel)

build:
	CGO_ENABLED=0 $(GO) build -ldflags "-X main.version=$(VERSION)" -o $(BIN) ./meshd

# test: the README's test command: lint, unit, in-process, multi-process and
# (as root) network-namespace tests, then fuzz smoke runs. The namespace
# tests (package e2e) run after the rest, on their own: their failover and
# NAT timings must not share the two cores with race-detector builds. As root it first
# installs the system packages the namespace tests use (scripts/deps.sh).
test: lint
	@if [ "$$(id -u)" = 0 ]; then ./scripts/deps.sh; fi
	$(GO) test -race -count=1 -timeout 15m $$($(GO) list ./... | grep -v '/e2e$$')
	$(GO) test -count=1 -timeout 20m ./e2e
	$(MAKE) fuzz
	@if [ "$$(id -u)" = 0 ]; then $(MAKE) lab-docker-check; else echo "skipping lab-docker-check (needs root)"; fi

# fuzz: a few seconds of each fuzz target (the token parser, the FSM decoder,
# the path probe decoder, the policy parser, the packet filter).
fuzz:
	$(GO) test -run '^$$' -fuzz '^FuzzParse$$' -fuzztime 5s ./pkg/token
	$(GO) test -run '^$$' -fuzz '^FuzzDecode$$' -fuzztime 5s ./coordinator/fsm
	$(GO) test -run '^$$' -fuzz '^FuzzOpen$$' -fuzztime 5s ./peer/disco
	$(GO) test -run '^$$' -fuzz '^FuzzParse$$' -fuzztime 5s ./pkg/policy
	$(GO) test -run '^$$' -fuzz '^FuzzPacket$$' -fuzztime 5s ./pkg/policy/filter

# e2e: only the network-namespace tests (root): the whole lab, reachability,
# true source IPs, restart, removal, coordinators down, SNAT; NAT traversal
# (the NAT matrix, its IPv6 firewall twin, path switches, coturn as the relay); the rolling upgrade
# from an earlier commit; the dashboard in headless Chromium.
e2e:
	./scripts/deps.sh
	$(GO) test -count=1 -v -run 'TestMesh|TestGateway|TestNAT|TestRelay|TestRollingUpgrade|TestDashboard' ./e2e/

# soak: 5 minutes of the lab with both cores busy; no route may move.
soak: build
	./scripts/deps.sh
	MESHD_SOAK=5m $(GO) test -count=1 -v -timeout 15m -run TestSoakNoFalseFailover ./e2e/

# chaos: the coordinator fault suite at length (root): five rounds of every
# fault (leader isolated, symmetric and asymmetric cuts, a flapping link,
# SIGSTOP of the leader, a full disk under the leader), each round's history
# checked for linearizability; figures in bench/chaos.json. make test runs
# one short round of each.
chaos:
	./scripts/deps.sh
	MESHD_CHAOS=long $(GO) test -count=1 -v -timeout 20m -run '^TestChaos$$' ./e2e/

# bench: every figure beside its same-run baseline; prints a table and
# merges the figures into bench/results.json.
bench:
	$(GO) run ./e2e/bench

# bench-scale: the control plane at 100, 1,000 and 10,000 simulated peers
# (meshsim), merged into bench/results.json.
bench-scale:
	$(GO) run ./e2e/meshsim -n 100,1000,10000 -results bench/results.json

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

# lab-docker: the same topology with docker-compose (docker-compose.yml), as
# root. Installs docker.io, docker-compose and busybox-static when missing,
# starts dockerd when none runs, builds the image and starts the lab.
BUSYBOX ?= /bin/busybox
lab-docker-bin: build
	./scripts/docker-deps.sh
	cp -f $(BUSYBOX) bin/busybox

lab-docker: lab-docker-bin
	$(GO) run ./e2e/dockerlab up

# lab-docker-check: start the docker lab, check reachability, source IPs
# and a gateway failover, then remove it (also on failure) and stop the
# dockerd that docker-deps.sh started, if it did.
lab-docker-check: lab-docker-bin
	$(GO) run ./e2e/dockerlab check; rc=$$?; ./scripts/docker-deps.sh stop; exit $$rc

lab-docker-down:
	$(GO) run ./e2e/dockerlab down
