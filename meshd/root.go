package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/meshd/meshd/pkg/api"
	"github.com/meshd/meshd/pkg/apiclient"
)

// exitError carries an exit code through cobra.
type exitError struct{ code int }

func (e exitError) Error() string { return fmt.Sprintf("exit %d", e.code) }

// run executes the command line and returns the process exit code.
func run(args []string) int {
	startPprof()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	return execute(ctx, args, os.Stdout, os.Stderr)
}

// execute runs one command line with its output and errors going to out
// and errOut, and returns the exit code: 0, the code of an exitError, or 1
// for any other error, which it prints to errOut.
func execute(ctx context.Context, args []string, out, errOut io.Writer) int {
	root := newRoot(out, errOut)
	root.SetArgs(args)
	err := root.ExecuteContext(ctx)
	if err == nil {
		return 0
	}
	var ee exitError
	if errors.As(err, &ee) {
		return ee.code
	}
	var ae *api.Error
	var ue *apiclient.UnreachableError
	if errors.As(err, &ae) && !errors.As(err, &ue) {
		if len(ae.Details) > 1 {
			fmt.Fprintf(errOut, "meshd: %d problems (%s):\n", len(ae.Details), ae.Code)
			for _, d := range ae.Details {
				fmt.Fprintf(errOut, "  %s\n", d)
			}
		} else {
			fmt.Fprintf(errOut, "meshd: %s (%s)\n", ae.Message, ae.Code)
		}
	} else {
		fmt.Fprintf(errOut, "meshd: %v\n", err)
	}
	return 1
}

// globals are the flags every admin command shares.
type globals struct {
	coordinator string
	json        bool
	out, errOut io.Writer
}

func newRoot(out, errOut io.Writer) *cobra.Command {
	g := &globals{out: out, errOut: errOut}
	root := &cobra.Command{
		Use:   "meshd",
		Short: "meshd connects sites and devices into one WireGuard mesh",
		Long: `meshd connects sites and devices into one WireGuard mesh.

Admin commands find the cluster through --coordinator URL or MESHD_COORDINATOR
(default: the coordinators named in the admin token) and authenticate with
MESHD_ADMIN_TOKEN: the contents of a coordinator's DATA_DIR/admin.token (the
bootstrap credential) or a credential from meshd admin token create.`,
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.SetOut(out)
	root.SetErr(errOut)
	root.PersistentFlags().StringVar(&g.coordinator, "coordinator", os.Getenv("MESHD_COORDINATOR"), "coordinator API URL (env MESHD_COORDINATOR)")
	root.AddCommand(
		newCoordinatorCmd(g),
		newClusterCmd(g),
		newVNetCmd(g),
		newTokenCmd(g),
		newPeerCmd(g),
		newRouteCmd(g),
		newGossipCmd(g),
		newPolicyCmd(g),
		newAdminCmd(g),
		newStatusCmd(g),
		newPingCmd(g),
		newNetcheckCmd(g),
		newVersionCmd(g),
	)
	strictGroups(root)
	return root
}

func addJSONFlag(cmd *cobra.Command, g *globals) {
	cmd.Flags().BoolVar(&g.json, "json", false, "print JSON")
}

func printJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}
