package main

import (
	"context"
	"fmt"
	"strings"

	"github.com/spf13/cobra"

	"github.com/detour-mesh/detour/redirect/backends/netfilter"
)

type statusOptions struct {
	netns  string
	output string
}

func newStatusCmd(s streams, g *globalOptions) *cobra.Command {
	o := &statusOptions{}
	cmd := &cobra.Command{
		Use:   "status [flags]",
		Short: "Show what detour has installed: backend, families, rules",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return runStatus(cmd.Context(), o, g, s)
		},
	}
	bindNetNSFlag(cmd.Flags(), &o.netns)
	output(cmd.Flags(), &o.output)
	return cmd
}

func runStatus(ctx context.Context, o *statusOptions, g *globalOptions, s streams) error {
	if err := checkOutput(o.output); err != nil {
		return err
	}
	nsPath, err := netnsPath(o.netns)
	if err != nil {
		return err
	}
	eng, err := g.engine(nsPath, netfilter.AnyBackend, s.err)
	if err != nil {
		return err
	}
	st, err := eng.Status(ctx)
	if err != nil {
		return fmt.Errorf("status: %w", err)
	}
	if o.output == "json" {
		return writeJSON(s, st)
	}
	shared := ""
	if len(st.SharedWith) > 0 {
		shared = fmt.Sprintf("detour's addresses on lo in this namespace are kept for %s\n", strings.Join(st.SharedWith, ", "))
	}
	for _, l := range st.Leftovers {
		shared += fmt.Sprintf("left behind, belonging to no install: %s; `detour uninstall` removes it\n", l)
	}
	for _, c := range st.Conflicts {
		shared += fmt.Sprintf("in the way: %s: install and uninstall refuse to run until it is gone\n", c)
	}
	if !st.Installed {
		_, err := fmt.Fprint(s.out, "detour is not installed\n"+shared)
		return err
	}
	backend := string(st.Backend)
	if backend == "" {
		backend = "routing and addresses only" // no backend holds rules of detour's: an install cut short
	}
	fmt.Fprintf(s.out, "detour is installed (%s; %s)\n%s", backend, joinFamilies(st.Families), shared)
	if len(st.Others) > 0 {
		fmt.Fprintf(s.out, "detour's rules are also in %s (a switch that did not finish): install with --backend %s to keep one, or uninstall\n", joinBackends(st.Others), st.Backend)
	}
	for _, f := range st.Families {
		fmt.Fprintf(s.out, "\n# %s\n%s", f, st.Rules[f])
	}
	return nil
}
