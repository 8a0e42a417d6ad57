package main

import (
	"fmt"
	"net/url"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/meshd/meshd/coordinator"
	"github.com/meshd/meshd/coordinator/clusterkey"
	"github.com/meshd/meshd/pkg/logging"
)

func newCoordinatorCmd(g *globals) *cobra.Command {
	var (
		cfg      coordinator.Config
		keyFile  string
		initial  string
		logLevel string
	)
	cmd := &cobra.Command{
		Use:   "coordinator",
		Short: "Run a coordinator (control-plane server)",
		Long: `Run a coordinator. Three or five of them form a Raft cluster; all share the
secret made by 'meshd coordinator keygen'. Without --initial-cluster the node
forms a single-node cluster. Once the cluster is up, DATA_DIR/admin.token holds
the admin credential (MESHD_ADMIN_TOKEN).`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if keyFile == "" {
				return fmt.Errorf("--cluster-key-file is required (make one with 'meshd coordinator keygen > cluster.key')")
			}
			key, err := clusterkey.Load(keyFile)
			if err != nil {
				return err
			}
			cfg.ClusterKey = key
			if cfg.InitialCluster, err = parseInitialCluster(initial); err != nil {
				return err
			}
			lvl, ok := logging.ParseLevel(logLevel)
			if !ok {
				return fmt.Errorf("--log-level %q: use debug, info, warn or error", logLevel)
			}
			cfg.Logger = logging.New(g.errOut, lvl)
			if cfg.STUNListen == "off" {
				cfg.STUNListen = ""
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
	f.DurationVar(&cfg.HeartbeatTimeout, "raft-heartbeat-timeout", coordinator.DefaultHeartbeatTimeout, "Raft heartbeat timeout (raise across a WAN)")
	f.DurationVar(&cfg.ElectionTimeout, "raft-election-timeout", coordinator.DefaultElectionTimeout, "Raft election timeout")
	f.DurationVar(&cfg.LeaderLeaseTimeout, "raft-leader-lease-timeout", coordinator.DefaultLeaderLeaseTimeout, "Raft leader lease timeout")
	f.DurationVar(&cfg.EphemeralGrace, "ephemeral-grace", 10*time.Minute, "how long an ephemeral peer may be offline before it is removed")
	f.StringVar(&cfg.STUNListen, "stun-listen", ":3478", "UDP host:port of the STUN server peers learn their public address from; advertised with the host of the API URL (\"off\" or \"\" disables)")
	f.StringVar(&logLevel, "log-level", "info", "debug, info, warn or error")

	cmd.AddCommand(&cobra.Command{
		Use:   "keygen",
		Short: "Print a new cluster secret",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			k, err := clusterkey.Generate()
			if err != nil {
				return err
			}
			_, err = fmt.Fprint(g.out, k.String())
			return err
		},
	})
	var atKey string
	var atURLs []string
	at := &cobra.Command{
		Use:   "admin-token",
		Short: "Print the admin credential for the coordinators at --url, made from the cluster key",
		Long: `Print the admin credential (what DATA_DIR/admin.token holds) for the
coordinators at --url, made from the cluster key alone: useful where a
coordinator's data dir is out of reach, such as a container without a shell.`,
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
	return cmd
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
