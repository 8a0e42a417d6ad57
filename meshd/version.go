package main

import (
	"fmt"
	"net/http"
	"runtime/debug"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/meshd/meshd/coordinator/fsm"
	"github.com/meshd/meshd/pkg/api"
)

// version is the release version, set when linking (-ldflags "-X
// main.version=v1.2.3"); without it the build's module and VCS information
// name the build.
var version string

// buildVersion names this build: the linked release version, the module
// version, or the VCS revision (with -dirty for a modified tree).
func buildVersion() string {
	if version != "" {
		return version
	}
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return "unknown"
	}
	if v := bi.Main.Version; v != "" && v != "(devel)" {
		return v
	}
	var rev, dirty string
	for _, s := range bi.Settings {
		switch s.Key {
		case "vcs.revision":
			rev = s.Value
		case "vcs.modified":
			if s.Value == "true" {
				dirty = "-dirty"
			}
		}
	}
	if len(rev) > 12 {
		rev = rev[:12]
	}
	if rev == "" {
		return "devel"
	}
	return rev + dirty
}

// versionInfo is what `meshd version --json` prints.
type versionInfo struct {
	Version string `json:"version"`
	// Protocol is the agent/coordinator protocol this build speaks;
	// as a coordinator it serves agents from MinProtocol up.
	Protocol    int `json:"protocol"`
	MinProtocol int `json:"min_protocol"`
	// FeatureLevel is the coordinator feature level of this build.
	FeatureLevel int                  `json:"feature_level"`
	Cluster      *api.ClusterVersions `json:"cluster,omitempty"`
}

func newVersionCmd(g *globals) *cobra.Command {
	var cluster bool
	cmd := &cobra.Command{
		Use:   "version",
		Short: "Show this build's version, protocol and feature level (--cluster: every coordinator's)",
		Long: `Show this build's version, the agent/coordinator protocol it speaks and its
coordinator feature level. With --cluster (needs MESHD_ADMIN_TOKEN) also what
every coordinator runs and which commands that need a feature level the
cluster accepts now: during a rolling upgrade, a command some coordinator
does not know yet is refused (upgrade_required) until every one is upgraded.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			info := versionInfo{Version: buildVersion(), Protocol: api.ProtocolVersion, MinProtocol: api.MinProtocolVersion, FeatureLevel: fsm.FeatureLevel}
			if cluster {
				info.Cluster = &api.ClusterVersions{}
				if err := g.call(cmd, http.MethodGet, "/v1/cluster/versions", nil, info.Cluster); err != nil {
					return err
				}
			}
			if g.json {
				return printJSON(g.out, info)
			}
			fmt.Fprintf(g.out, "meshd %s (protocol %d, serves agents of protocol %d and up; feature level %d)\n",
				info.Version, info.Protocol, info.MinProtocol, info.FeatureLevel)
			if info.Cluster == nil {
				return nil
			}
			c := info.Cluster
			fmt.Fprintf(g.out, "cluster feature level: %d (as seen by %s)\n", c.FeatureLevel, c.Server)
			w := tabwriter.NewWriter(g.out, 0, 4, 2, ' ', 0)
			fmt.Fprintln(w, "COORDINATOR\tVERSION\tFEATURE LEVEL")
			for _, m := range c.Members {
				v := dash(m.Version)
				if !m.Registered {
					v = "(not registered)"
				}
				fmt.Fprintf(w, "%s\t%s\t%d\n", m.Name, v, m.FeatureLevel)
			}
			w.Flush()
			for _, f := range c.Features {
				state := "accepted"
				if !f.Enabled {
					state = "refused until these coordinators are upgraded: " + strings.Join(f.Outdated, ", ")
				}
				fmt.Fprintf(g.out, "'%s' (feature level %d): %s\n", f.Command, f.Level, state)
			}
			return nil
		},
	}
	cmd.Flags().BoolVar(&cluster, "cluster", false, "also show what every coordinator runs (needs MESHD_ADMIN_TOKEN)")
	addJSONFlag(cmd, g)
	return cmd
}
