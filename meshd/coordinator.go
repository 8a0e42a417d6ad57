package main

import (
	"encoding/pem"
	"fmt"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/meshd/meshd/coordinator"
	"github.com/meshd/meshd/coordinator/clusterkey"
	"github.com/meshd/meshd/pkg/logging"
)

// minGossipKeyGrace is the shortest --gossip-key-grace: peers encrypt with a
// new gossip key 10 s after they receive it, and the previous one must stay
// accepted until every member has switched.
const minGossipKeyGrace = 15 * time.Second

func newCoordinatorCmd(g *globals) *cobra.Command {
	var (
		cfg             coordinator.Config
		keyFile         string
		initial         string
		logLevel        string
		relayTLS        string
		relayPorts      string
		relayBandwidth  string
		relaySecretFile string
		stunRate        int
	)
	cmd := &cobra.Command{
		Use:   "coordinator",
		Short: "Run a coordinator (control-plane server)",
		Long: `Run a coordinator. Three or five of them form a Raft cluster; all share the
secret made by 'meshd coordinator keygen'. Without --initial-cluster the node
forms a single-node cluster. A coordinator added to a running cluster (meshd
cluster add) starts with an empty --data-dir and --join https://MEMBER:PORT
instead: it waits to be added and catches up from the leader. Once the
cluster is up, DATA_DIR/admin.token holds
the bootstrap admin credential (MESHD_ADMIN_TOKEN) until it is revoked (meshd
admin token revoke admin), when the file is removed.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := checkPositive(cmd, "raft-snapshot-threshold", "raft-snapshot-interval", "raft-trailing-logs",
				"raft-heartbeat-timeout", "raft-election-timeout", "raft-leader-lease-timeout", "ephemeral-grace",
				"api-read-timeout", "api-idle-timeout", "relay-credential-ttl"); err != nil {
				return err
			}
			if keyFile == "" {
				return fmt.Errorf("--cluster-key-file is required (make one with 'meshd coordinator keygen --out cluster.key')")
			}
			key, err := clusterkey.Load(keyFile)
			if err != nil {
				return err
			}
			cfg.ClusterKey = key
			warnLooseKeyFiles(g.errOut,
				secretFile{"cluster key file", keyFile},
				secretFile{"admin token file", filepath.Join(cfg.DataDir, "admin.token")},
				secretFile{"relay secret file", relaySecretFile},
			)
			if cfg.GossipKeyGrace < minGossipKeyGrace {
				return fmt.Errorf("--gossip-key-grace %s: use at least %s (peers switch to a new key 10s after they receive it)", cfg.GossipKeyGrace, minGossipKeyGrace)
			}
			if cfg.InitialCluster, err = parseInitialCluster(initial); err != nil {
				return err
			}
			lvl, ok := logging.ParseLevel(logLevel)
			if !ok {
				return fmt.Errorf("--log-level %q: use debug, info, warn or error", logLevel)
			}
			cfg.Logger = logging.New(g.errOut, lvl)
			cfg.Version = buildVersion()
			stun, err := stunListen(cfg.STUNListen, cmd.Flags().Changed("stun-listen"), cfg.APIListen)
			if err != nil {
				return err
			}
			cfg.STUNListen = stun
			if err := relayConfig(&cfg, cmd.Flags().Changed("relay-tls-listen"), relayTLS, relayPorts, relayBandwidth, relaySecretFile); err != nil {
				return err
			}
			switch {
			case stunRate < 0:
				return fmt.Errorf("--stun-rate %d: use 0 (unlimited) or more", stunRate)
			case stunRate == 0:
				cfg.STUNRequestRate = -1
			default:
				cfg.STUNRequestRate = stunRate
			}
			srv, err := coordinator.New(cfg)
			if err != nil {
				return err
			}
			return srv.Run(cmd.Context())
		},
	}
	f := cmd.Flags()
	f.StringVar(&cfg.Name, "name", "c1", "this coordinator's name, unique in the cluster")
	f.StringVar(&cfg.DataDir, "data-dir", "./meshd-data", "directory for the Raft log, snapshots and admin.token")
	f.StringVar(&cfg.APIListen, "listen", "127.0.0.1:8443", "HTTPS API listen address")
	f.StringVar(&cfg.APIAdvertise, "advertise-api", "", "API URL peers use (default https://LISTEN)")
	f.StringVar(&cfg.RaftListen, "raft-listen", "127.0.0.1:8301", "Raft listen address")
	f.StringVar(&cfg.RaftAdvertise, "advertise-raft", "", "Raft address other coordinators dial (default --raft-listen)")
	f.StringVar(&keyFile, "cluster-key-file", "", "file with the shared cluster secret (required)")
	f.StringVar(&initial, "initial-cluster", "", "every member of a new cluster: c1=HOST:RAFTPORT,c2=...,c3=...")
	f.StringSliceVar(&cfg.Join, "join", nil, "API URL of a member of a running cluster (https://HOST:PORT; repeat or comma separate): with an empty data dir, do not bootstrap but wait to be added with 'meshd cluster add NAME RAFTADDR' and catch up from the leader; not with --initial-cluster")
	f.Uint64Var(&cfg.SnapshotThreshold, "raft-snapshot-threshold", 16384, "Raft log entries between two snapshots")
	f.DurationVar(&cfg.SnapshotInterval, "raft-snapshot-interval", 120*time.Second, "how often Raft checks whether to take a snapshot")
	f.Uint64Var(&cfg.TrailingLogs, "raft-trailing-logs", 10240, "Raft log entries kept after a snapshot (a follower further behind is sent the snapshot)")
	f.DurationVar(&cfg.HeartbeatTimeout, "raft-heartbeat-timeout", coordinator.DefaultHeartbeatTimeout, "Raft heartbeat timeout (raise across a WAN)")
	f.DurationVar(&cfg.ElectionTimeout, "raft-election-timeout", coordinator.DefaultElectionTimeout, "Raft election timeout")
	f.DurationVar(&cfg.LeaderLeaseTimeout, "raft-leader-lease-timeout", coordinator.DefaultLeaderLeaseTimeout, "Raft leader lease timeout")
	f.DurationVar(&cfg.EphemeralGrace, "ephemeral-grace", 10*time.Minute, "how long an ephemeral peer may be offline before it is removed")
	f.DurationVar(&cfg.GossipKeyGrace, "gossip-key-grace", coordinator.DefaultGossipKeyGrace, "how long a vnet's previous gossip key stays accepted after a rotation (a peer removed, or 'meshd gossip rotate-key'); at least 15s, as peers switch to a new key 10s after they receive it")
	f.StringVar(&cfg.STUNListen, "stun-listen", "", "UDP host:port of STUN (peers learn their public address) and of the TURN relay over UDP; advertised with the host of the API URL (default: the host of --listen with port 3478, so several coordinators on one host each bind their own address; \"off\" disables both)")
	f.StringVar(&relayTLS, "relay-tls-listen", "", "TCP host:port of the TURN relay over TLS, for networks that block UDP (default: the host of --listen with port 5349, or an ephemeral port of that host when 5349 is taken; \"off\" disables)")
	f.DurationVar(&cfg.APIReadTimeout, "api-read-timeout", coordinator.DefaultAPIReadTimeout, "how long a client may take to send a whole API request, body included (a network-map watch is exempt once its request is in)")
	f.DurationVar(&cfg.APIIdleTimeout, "api-idle-timeout", coordinator.DefaultAPIIdleTimeout, "close a kept-alive API connection that has carried no request for this long")
	f.IntVar(&stunRate, "stun-rate", coordinator.DefaultSTUNRequestRate, "STUN and TURN requests over UDP answered per second per source address (bursts of twice that); the rest are dropped, so the port cannot reflect a flood at a forged address. The default leaves room for about a thousand agents behind one NAT address; 0 = unlimited")
	f.StringVar(&relayPorts, "relay-ports", "49152-65535", "UDP port range of relayed addresses (open it in firewalls; \"0\" lets the system pick any port)")
	f.StringVar(&relayBandwidth, "relay-bandwidth", "10M", "cap of each relay allocation, in bytes per second in each direction (K, M, G are powers of 1000; 0 = unlimited). The default, 80 Mbit/s, carries a relayed session well while a single peer cannot fill the uplink a coordinator shares with Raft and the API; relaying is the fallback until a direct path answers")
	f.DurationVar(&cfg.RelayCredentialTTL, "relay-credential-ttl", coordinator.DefaultRelayCredentialTTL, "how long a relay credential handed to a peer is good for")
	f.StringSliceVar(&cfg.RelayURLs, "relay-url", nil, "external TURN server handed to peers instead of the coordinators' own relays: turn:HOST:PORT[?transport=udp|tcp] or turns:HOST:PORT (repeat or comma separate; needs --relay-secret-file)")
	f.StringVar(&relaySecretFile, "relay-secret-file", "", "file with the external TURN servers' shared secret (coturn's static-auth-secret with use-auth-secret)")
	f.StringVar(&cfg.MetricsListen, "metrics-listen", "", "HOST:PORT where Prometheus metrics are served at /metrics in plain HTTP without a credential, for scrapers (default: off; the API's /metrics needs an admin credential, read-only ones included)")
	f.StringVar(&logLevel, "log-level", "info", "debug, info, warn or error")

	var keyOut string
	keygen := &cobra.Command{
		Use:   "keygen [--out FILE]",
		Short: "Make a new cluster secret: into FILE (mode 0600, never overwritten) with --out, else on stdout",
		Long: `Make a new cluster secret, the one every coordinator of a cluster shares.
With --out FILE it is written to FILE with mode 0600; an existing FILE is never
overwritten. Without --out it is printed on stdout: redirect it into a file only
you can read (umask 077), as the coordinator warns about a key file its group or
others can read.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			k, err := clusterkey.Generate()
			if err != nil {
				return err
			}
			if keyOut != "" {
				if err := writeKeyFile(keyOut, []byte(k.String())); err != nil {
					return fmt.Errorf("--out: %w", err)
				}
				fmt.Fprintf(g.errOut, "cluster key written to %s (mode 0600)\n", keyOut)
				return nil
			}
			_, err = fmt.Fprint(g.out, k.String())
			return err
		},
	}
	keygen.Flags().StringVarP(&keyOut, "out", "o", "", "write the key to this file (mode 0600; an existing file is not overwritten)")
	cmd.AddCommand(keygen)
	var atKey string
	var atURLs []string
	at := &cobra.Command{
		Use:   "admin-token",
		Short: "Print the admin credential for the coordinators at --url, made from the cluster key",
		Long: `Print the bootstrap admin credential (what DATA_DIR/admin.token holds) for
the coordinators at --url, made from the cluster key alone: useful where a
coordinator's data dir is out of reach, such as a container without a shell.
Once it has been revoked (meshd admin token revoke admin) the cluster refuses it.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if atKey == "" || len(atURLs) == 0 {
				return fmt.Errorf("--cluster-key-file and --url are required")
			}
			for _, u := range atURLs {
				pu, err := url.Parse(u)
				if err != nil || pu.Scheme != "https" || pu.Host == "" {
					return fmt.Errorf("--url %q is not an https://HOST:PORT URL", u)
				}
			}
			key, err := clusterkey.Load(atKey)
			if err != nil {
				return err
			}
			_, err = fmt.Fprintln(g.out, coordinator.AdminToken(key, atURLs))
			return err
		},
	}
	at.Flags().StringVar(&atKey, "cluster-key-file", "", "file with the shared cluster secret")
	at.Flags().StringSliceVar(&atURLs, "url", nil, "coordinator API URLs the credential names (comma separated or repeated)")
	cmd.AddCommand(at)
	var caKey string
	ca := &cobra.Command{
		Use:   "api-ca",
		Short: "Print the certificate (PEM) of the CA that signs the coordinators' API certificates, made from the cluster key",
		Long: `Print the certificate of the cluster's API CA in PEM, made from the cluster key
alone. A client that does not read meshd tokens (Prometheus scraping
https://HOST:8443/metrics, say) verifies the coordinators with it: each API
certificate names the host of --advertise-api (or --listen), localhost and
the loopback addresses.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if caKey == "" {
				return fmt.Errorf("--cluster-key-file is required")
			}
			key, err := clusterkey.Load(caKey)
			if err != nil {
				return err
			}
			return pem.Encode(g.out, &pem.Block{Type: "CERTIFICATE", Bytes: key.APICA().Cert.Raw})
		},
	}
	ca.Flags().StringVar(&caKey, "cluster-key-file", "", "file with the shared cluster secret")
	cmd.AddCommand(ca)
	cmd.AddCommand(newRestoreCmd(g))
	return cmd
}

func newRestoreCmd(g *globals) *cobra.Command {
	var (
		cfg       coordinator.RestoreConfig
		initial   string
		raftAddr  string
		advertise string
		keyFile   string
	)
	cmd := &cobra.Command{
		Use:   "restore --data-dir DIR [--name N] [--initial-cluster c1=HOST:PORT,...] FILE",
		Short: "Seed a new cluster's data dir from a snapshot file (meshd cluster snapshot save)",
		Long: `Seed the data dir of a coordinator of a NEW cluster from a snapshot file, after
checking its checksum. DIR must be empty or absent. Every table comes back
(vnets, peers and their credentials, join and admin tokens, policies, routes,
gossip keys); the old cluster's coordinators are forgotten and the new ones
register as they start, so the maps peers receive list the new coordinators.
Restore each node of the new cluster from the same file with the same
--initial-cluster (or restore one and start the others empty with --join), then
start each with 'meshd coordinator' and its usual flags (--initial-cluster is
ignored once the data dir has state). Use the old cluster's key file: peers and
credentials are bound to it (--cluster-key-file here checks it).`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if cfg.DataDir == "" {
				return fmt.Errorf("--data-dir is required")
			}
			var err error
			if cfg.Members, err = parseInitialCluster(initial); err != nil {
				return err
			}
			cfg.RaftAddr = raftAddr
			if advertise != "" {
				cfg.RaftAddr = advertise
			}
			if keyFile != "" {
				key, err := clusterkey.Load(keyFile)
				if err != nil {
					return err
				}
				pin := key.APICA().Pin()
				cfg.Pin = &pin
			}
			f, err := os.Open(args[0])
			if err != nil {
				return err
			}
			defer f.Close()
			res, err := coordinator.Restore(cfg, f)
			if err != nil {
				return err
			}
			var names []string
			for _, m := range res.Members {
				names = append(names, m.Name+"="+m.RaftAddr)
			}
			fmt.Fprintf(g.out, "restored snapshot index %d (taken %s by %s) into %s as coordinator %s of a new cluster %s; its log goes on from index %d\n",
				res.Header.Index, res.Header.TakenAt.Format(time.RFC3339), res.Header.TakenBy, cfg.DataDir, cfg.Name, strings.Join(names, ","), res.Index)
			fmt.Fprintf(g.out, "start it with: meshd coordinator --name %s --data-dir %s --cluster-key-file KEY ...\n", cfg.Name, cfg.DataDir)
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&cfg.DataDir, "data-dir", "", "the new coordinator's data dir (empty or absent)")
	f.StringVar(&cfg.Name, "name", "c1", "the new coordinator's name")
	f.StringVar(&initial, "initial-cluster", "", "every member of the new cluster: c1=HOST:RAFTPORT,c2=...; default: this node alone")
	f.StringVar(&raftAddr, "raft-listen", "127.0.0.1:8301", "this node's Raft address, for a cluster of this node alone")
	f.StringVar(&advertise, "advertise-raft", "", "the Raft address others dial, when it differs from --raft-listen")
	f.StringVar(&keyFile, "cluster-key-file", "", "the cluster key the new cluster runs with: refuse a snapshot of a cluster with another key")
	return cmd
}

// relayConfig fills cfg's relay fields from the flags that need parsing.
func relayConfig(cfg *coordinator.Config, tlsSet bool, tlsListen, ports, bandwidth, secretFile string) error {
	switch {
	case tlsListen == "off" || tlsSet && tlsListen == "":
		cfg.RelayTLSListen = ""
	case tlsSet:
		cfg.RelayTLSListen = tlsListen
	default:
		host, _, err := net.SplitHostPort(cfg.APIListen)
		if err != nil {
			return fmt.Errorf("--listen %q: %w", cfg.APIListen, err)
		}
		cfg.RelayTLSListen = net.JoinHostPort(host, strconv.Itoa(coordinator.DefaultRelayTLSPort))
		cfg.RelayTLSFallback = true
	}
	var err error
	if cfg.RelayPortMin, cfg.RelayPortMax, err = parsePortRange(ports); err != nil {
		return fmt.Errorf("--relay-ports: %w", err)
	}
	if cfg.RelayBandwidth, err = parseBytes(bandwidth); err != nil {
		return fmt.Errorf("--relay-bandwidth: %w", err)
	}
	switch {
	case secretFile != "":
		b, err := os.ReadFile(secretFile)
		if err != nil {
			return fmt.Errorf("--relay-secret-file: %w", err)
		}
		cfg.RelaySecret = []byte(strings.TrimSpace(string(b)))
		if len(cfg.RelaySecret) == 0 {
			return fmt.Errorf("--relay-secret-file %s is empty", secretFile)
		}
		if len(cfg.RelayURLs) == 0 {
			return fmt.Errorf("--relay-secret-file is for external relays: give --relay-url too")
		}
	case len(cfg.RelayURLs) > 0:
		return fmt.Errorf("--relay-url needs --relay-secret-file (the TURN server's static-auth-secret)")
	}
	return nil
}

// parsePortRange reads "MIN-MAX", or "0" for any port.
func parsePortRange(s string) (lo, hi uint16, err error) {
	if strings.TrimSpace(s) == "0" {
		return 0, 0, nil
	}
	a, b, ok := strings.Cut(s, "-")
	l, err1 := strconv.ParseUint(strings.TrimSpace(a), 10, 16)
	h, err2 := strconv.ParseUint(strings.TrimSpace(b), 10, 16)
	if !ok || err1 != nil || err2 != nil || l == 0 || l > h {
		return 0, 0, fmt.Errorf("%q is not a port range such as 49152-65535", s)
	}
	return uint16(l), uint16(h), nil
}

// parseBytes reads a byte count such as 500K, 10M or 1G (powers of 1000,
// an optional trailing B), or a plain number.
func parseBytes(s string) (int64, error) {
	t := strings.TrimSuffix(strings.ToUpper(strings.TrimSpace(s)), "B")
	mult := int64(1)
	if n := len(t); n > 0 {
		switch t[n-1] {
		case 'K':
			mult = 1e3
		case 'M':
			mult = 1e6
		case 'G':
			mult = 1e9
		}
		if mult > 1 {
			t = t[:n-1]
		}
	}
	v, err := strconv.ParseFloat(t, 64)
	if err != nil || v < 0 || v*float64(mult) > 1e15 {
		return 0, fmt.Errorf("%q is not a byte count such as 500K, 10M or 1G", s)
	}
	return int64(v * float64(mult)), nil
}

func parseInitialCluster(s string) ([]coordinator.Member, error) {
	if strings.TrimSpace(s) == "" {
		return nil, nil
	}
	var out []coordinator.Member
	for _, part := range strings.Split(s, ",") {
		name, addr, ok := strings.Cut(strings.TrimSpace(part), "=")
		if !ok || name == "" || addr == "" {
			return nil, fmt.Errorf("--initial-cluster entry %q is not NAME=HOST:PORT", part)
		}
		out = append(out, coordinator.Member{Name: name, RaftAddr: addr})
	}
	return out, nil
}

// stunListen is the STUN/TURN UDP address: given explicitly ("off"
// disables it), or by default port 3478 on the host of the API listen
// address (every address when that host is a wildcard).
func stunListen(flag string, given bool, apiListen string) (string, error) {
	if given {
		if flag == "off" {
			return "", nil
		}
		return flag, nil
	}
	host, _, err := net.SplitHostPort(apiListen)
	if err != nil {
		return "", fmt.Errorf("--listen %q: %w", apiListen, err)
	}
	return net.JoinHostPort(host, "3478"), nil
}
