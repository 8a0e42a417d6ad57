package main

import (
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/meshd/meshd/coordinator/backup"
	"github.com/meshd/meshd/pkg/api"
)

func newClusterCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{Use: "cluster", Short: "Inspect and change the coordinator cluster"}
	cmd.AddCommand(newClusterStatusCmd(g), newClusterAddCmd(g), newClusterPromoteCmd(g), newClusterRemoveCmd(g), newClusterSnapshotCmd(g))
	cmd.AddCommand(newTransferLeaderCmds(g)...)
	return cmd
}

func newClusterStatusCmd(g *globals) *cobra.Command {
	status := &cobra.Command{
		Use:   "status",
		Short: "Show the coordinators: which one leads, which answer, when the leader last heard from each, how far each lags",
		Long: `Show the coordinators. The coordinator that answers asks every member how far
its replica is (within half a second) and judges each from the leader's Raft
heartbeats: REACHABLE says whether the leader hears from it, LAST CONTACT how
long ago it last did, APPLIED the last Raft index the member applied and LAG
how many entries it trails the leader's commit index. A member that did not
answer shows why in the last column. With no leader (no quorum), a member is
reachable when it answered.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var st api.ClusterStatus
			if err := g.call(cmd, http.MethodGet, "/v1/cluster/status", nil, &st); err != nil {
				return err
			}
			if g.json {
				return printJSON(g.out, st)
			}
			fmt.Fprintf(g.out, "leader: %s   term: %d   commit index: %s   last applied index: %d (as seen by %s)\n",
				dash(st.Leader), st.Term, indexOrDash(st.CommitIndex), st.LastAppliedIndex, st.Server)
			return g.table("NAME\tROLE\tREACHABLE\tLAST CONTACT\tAPPLIED\tLAG\tRAFT\tAPI\tNOTE", func(w *tabwriter.Writer) {
				for _, m := range st.Members {
					reach := "-"
					if m.Reachable != nil {
						reach = map[bool]string{true: "yes", false: "NO"}[*m.Reachable]
					}
					contact := "-"
					if m.LastContactMS != nil {
						contact = (time.Duration(*m.LastContactMS) * time.Millisecond).Round(100 * time.Millisecond).String()
					}
					applied, lag := "-", "-"
					if m.AppliedIndex != nil {
						applied = fmt.Sprint(*m.AppliedIndex)
					}
					if m.Lag != nil {
						lag = fmt.Sprint(*m.Lag)
					}
					fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", m.Name, m.Role, reach, contact, applied, lag, m.RaftAddr, dash(m.APIURL), dash(m.Error))
				}
			})
		},
	}
	addJSONFlag(status, g)
	return status
}

func indexOrDash(i uint64) string {
	if i == 0 {
		return "-"
	}
	return fmt.Sprint(i)
}

func newClusterAddCmd(g *globals) *cobra.Command {
	var nonvoter bool
	var wait time.Duration
	add := &cobra.Command{
		Use:   "add NAME RAFTADDR",
		Short: "Add a coordinator: as a non-voter until it has caught up, then as a voter",
		Long: `Add a coordinator to the cluster. Start it with an empty --data-dir and
--join https://ANY_MEMBER:PORT (before or after this command): it does not
bootstrap a cluster of its own but waits for the leader, which sends it a
snapshot and the log since. It is added as a non-voter (it does not count for a
quorum while it catches up) and promoted to a voter once it trails the leader by
a few entries, within --wait; with --nonvoter it stays a non-voter. A name or a
Raft address already in the cluster is refused: to replace a coordinator,
remove it first.`,
		Args: cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := checkPositive(cmd, "wait"); err != nil {
				return err
			}
			name, addr := args[0], args[1]
			var m api.Member
			if err := g.call(cmd, http.MethodPost, "/v1/cluster/members", api.AddMemberRequest{Name: name, RaftAddr: addr, Nonvoter: true}, &m); err != nil {
				return err
			}
			if nonvoter {
				if g.json {
					return printJSON(g.out, m)
				}
				fmt.Fprintf(g.out, "added coordinator %s (raft %s) as a non-voter\n", name, addr)
				return nil
			}
			if !g.json {
				fmt.Fprintf(g.out, "added coordinator %s (raft %s) as a non-voter; promoting it once it has caught up (up to %s)\n", name, addr, wait)
			}
			m, err := promoteWhenCaughtUp(cmd, g, name, wait)
			if err != nil {
				return fmt.Errorf("%w\n%s stays a non-voter: once `meshd cluster status` shows its lag near 0, run `meshd cluster promote %s`", err, name, name)
			}
			if g.json {
				return printJSON(g.out, m)
			}
			fmt.Fprintf(g.out, "coordinator %s caught up and votes\n", name)
			return nil
		},
	}
	add.Flags().BoolVar(&nonvoter, "nonvoter", false, "keep it a non-voter (it replicates and serves, but does not count for a quorum)")
	add.Flags().DurationVar(&wait, "wait", 2*time.Minute, "how long to wait for it to catch up before promoting it")
	addJSONFlag(add, g)
	return add
}

// promoteWhenCaughtUp asks the leader to promote name until it agrees, it
// refuses for another reason than catching up, or wait has passed.
func promoteWhenCaughtUp(cmd *cobra.Command, g *globals, name string, wait time.Duration) (api.Member, error) {
	c, err := g.adminClient()
	if err != nil {
		return api.Member{}, err
	}
	deadline := time.Now().Add(wait)
	for {
		var m api.Member
		err := c.Do(cmd.Context(), http.MethodPost, "/v1/cluster/members/"+url.PathEscape(name)+"/promote", nil, &m)
		if err == nil {
			return m, nil
		}
		if !api.IsCode(err, api.CodeCatchingUp) || time.Now().After(deadline) {
			return api.Member{}, err
		}
		select {
		case <-cmd.Context().Done():
			return api.Member{}, cmd.Context().Err()
		case <-time.After(500 * time.Millisecond): // ask again
		}
	}
}

func newClusterPromoteCmd(g *globals) *cobra.Command {
	var force bool
	promote := &cobra.Command{
		Use:   "promote NAME",
		Short: "Give a non-voter a vote once it has caught up with the leader",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			var m api.Member
			if err := g.call(cmd, http.MethodPost, "/v1/cluster/members/"+url.PathEscape(args[0])+"/promote", api.PromoteRequest{Force: force}, &m); err != nil {
				return err
			}
			if g.json {
				return printJSON(g.out, m)
			}
			fmt.Fprintf(g.out, "coordinator %s votes\n", args[0])
			return nil
		},
	}
	promote.Flags().BoolVar(&force, "force", false, "promote without checking how far it has caught up (its API does not answer the leader)")
	addJSONFlag(promote, g)
	return promote
}

func newClusterRemoveCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "remove NAME",
		Short: "Remove a coordinator from the cluster (one whose host is gone, or before replacing it)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := g.call(cmd, http.MethodDelete, "/v1/cluster/members/"+url.PathEscape(args[0]), nil, nil); err != nil {
				return err
			}
			fmt.Fprintf(g.out, "removed coordinator %s\n", args[0])
			return nil
		},
	}
}

// newTransferLeaderCmds returns `transfer-leader [NAME]` and its hidden
// former name `transfer-leadership`.
func newTransferLeaderCmds(g *globals) []*cobra.Command {
	run := func(cmd *cobra.Command, args []string) error {
		var res api.LeadershipTransfer
		var err error
		if len(args) == 1 {
			err = g.call(cmd, http.MethodPost, "/v1/cluster/transfer-leader", api.TransferLeaderRequest{To: args[0]}, &res)
		} else {
			// The route every version serves.
			err = g.call(cmd, http.MethodPost, "/v1/cluster/transfer-leadership", nil, &res)
		}
		if err != nil {
			return err
		}
		if g.json {
			return printJSON(g.out, res)
		}
		if res.From == res.To {
			fmt.Fprintf(g.out, "%s already leads\n", res.From)
			return nil
		}
		fmt.Fprintf(g.out, "leadership moved from %s to %s\n", res.From, dash(res.To))
		return nil
	}
	transfer := &cobra.Command{
		Use:   "transfer-leader [NAME]",
		Short: "Hand the leadership to NAME, or to the most up-to-date follower (before maintenance on the leader's host)",
		Args:  cobra.MaximumNArgs(1),
		RunE:  run,
	}
	addJSONFlag(transfer, g)
	old := &cobra.Command{Use: "transfer-leadership [NAME]", Hidden: true, Args: cobra.MaximumNArgs(1), RunE: run}
	addJSONFlag(old, g)
	return []*cobra.Command{transfer, old}
}

func newClusterSnapshotCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{Use: "snapshot", Short: "Back up the cluster's state (and check a backup)"}
	save := &cobra.Command{
		Use:   "save FILE",
		Short: "Save a consistent, checksummed copy of the replicated state, taken online",
		Long: `Save a copy of the replicated state to FILE (mode 0600: it holds the gossip
keys and the hashes of every credential). Any coordinator serves it, after
catching up with what the leader had applied when the call arrived, so the copy
is the state at one index of the log. The file carries a header with that
index, the cluster and the SHA-256 of the state; it is checked as it arrives
and written under FILE only when whole. Restore it into a new cluster with
meshd coordinator restore. Needs a full (not read-only) admin credential.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := g.adminClient()
			if err != nil {
				return err
			}
			resp, err := c.Stream(cmd.Context(), "/v1/cluster/snapshot")
			if err != nil {
				return err
			}
			defer resp.Body.Close()
			h, err := saveSnapshot(args[0], resp.Body)
			if err != nil {
				return err
			}
			if g.json {
				return printJSON(g.out, h)
			}
			fmt.Fprintf(g.out, "saved %s: index %d (term %d) from %s, %d bytes of state, sha256 %s\n", args[0], h.Index, h.Term, h.TakenBy, h.Size, h.SHA256)
			return nil
		},
	}
	addJSONFlag(save, g)
	inspect := &cobra.Command{
		Use:   "inspect FILE",
		Short: "Check a snapshot file's checksum and print its header",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			f, err := os.Open(args[0])
			if err != nil {
				return err
			}
			defer f.Close()
			h, err := backup.Verify(f)
			if err != nil {
				return err
			}
			if g.json {
				return printJSON(g.out, h)
			}
			printSnapshotHeader(g.out, h)
			return nil
		},
	}
	addJSONFlag(inspect, g)
	cmd.AddCommand(save, inspect)
	return cmd
}

// saveSnapshot writes a snapshot read from src to path, checking it on the
// way: path is replaced only by a whole, verified file.
func saveSnapshot(path string, src io.Reader) (*backup.Header, error) {
	tmp, err := os.CreateTemp(filepath.Dir(path), filepath.Base(path)+".part-*")
	if err != nil {
		return nil, err
	}
	defer os.Remove(tmp.Name()) // after the rename, there is nothing left to remove
	if err := tmp.Chmod(0o600); err != nil {
		tmp.Close()
		return nil, err
	}
	h, err := backup.Copy(tmp, src)
	if err == nil {
		err = tmp.Sync()
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		if errors.Is(err, backup.ErrCorrupt) {
			return nil, fmt.Errorf("the snapshot did not arrive whole: %w", err)
		}
		return nil, fmt.Errorf("save snapshot: %w", err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return nil, err
	}
	return h, nil
}

func printSnapshotHeader(w io.Writer, h *backup.Header) {
	fmt.Fprintf(w, "format:    %d\nindex:     %d (term %d)\ntaken:     %s by %s (leader %s)\npin:       %s\nstate:     %d bytes, sha256 %s (checksum OK)\n",
		h.Format, h.Index, h.Term, h.TakenAt.Format(time.RFC3339), h.TakenBy, dash(h.Leader), h.Pin, h.Size, h.SHA256)
	var members []string
	for _, m := range h.Members {
		members = append(members, fmt.Sprintf("%s=%s (%s)", m.Name, m.RaftAddr, m.Role))
	}
	fmt.Fprintf(w, "members:   %s\n", join(members))
	var names []string
	for n := range h.Tables {
		names = append(names, n)
	}
	sort.Strings(names)
	var tables []string
	for _, n := range names {
		tables = append(tables, fmt.Sprintf("%s %d", n, h.Tables[n]))
	}
	fmt.Fprintf(w, "tables:    %s\n", strings.Join(tables, ", "))
}
