package main

import (
	"context"
	"fmt"
	"strings"

	"github.com/spf13/cobra"

	"github.com/detour-mesh/detour/redirect"
	"github.com/detour-mesh/detour/redirect/backends/netfilter"
)

type uninstallOptions struct {
	netns   string
	output  string
	persist persistOptions
	// stale removes only the stale scopes (redirect.Engine.Sweep).
	stale bool
}

func newUninstallCmd(s streams, g *globalOptions) *cobra.Command {
	o := &uninstallOptions{}
	cmd := &cobra.Command{
		Use:   "uninstall [flags]",
		Short: "Remove exactly what detour installed, in every family and table",
		Long: `Uninstall removes what detour installed in every backend, and nothing else: the
iptables chains named DETOUR_* and the rules carrying detour's ownership comment, the
nftables table inet detour, the eBPF scope's map entries (and the programs and pins once
no scope is left), the TPROXY routing and the addresses it put on lo. With --cgroup it
removes that eBPF cgroup scope only; a PATH whose cgroup was removed is
accepted, and what its scope left (its inbound table, its entries) is removed. It succeeds, changing nothing, when detour is not
installed. It refuses when it finds DETOUR_* chains it does not own.

Uninstall, and every install, also removes the stale eBPF scopes of the
node: those whose network namespace or cgroup is gone (deleted without an
uninstall), wherever they were; status names them. With --stale it removes
those and nothing else: every installed capture and every scope that may be
alive stays.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return runUninstall(cmd.Context(), o, g, s)
		},
	}
	bindNetNSFlag(cmd.Flags(), &o.netns)
	output(cmd.Flags(), &o.output)
	cmd.Flags().BoolVar(&o.persist.enabled, "persist", false, persistUsage)
	cmd.Flags().BoolVar(&o.stale, "stale", false, "remove only the stale eBPF scopes of the node (their network namespace or cgroup is gone), leaving every installed capture alone")
	return cmd
}

func runUninstall(ctx context.Context, o *uninstallOptions, g *globalOptions, s streams) error {
	if err := checkOutput(o.output); err != nil {
		return err
	}
	nsPath, err := netnsPath(o.netns)
	if err != nil {
		return err
	}
	if err := checkPersist(o.persist, nsPath, g.cgroup, false); err != nil {
		return err
	}
	if o.stale && (g.cgroup != "" || o.persist.enabled) {
		return usageError("--stale: not with --cgroup or --persist: it removes the stale scopes of the whole node, and nothing of any scope that may be alive")
	}
	eng, err := g.engine(nsPath, netfilter.AnyBackend, s.err)
	if err != nil {
		return err
	}
	if o.stale {
		return sweep(ctx, eng, o.output, s)
	}
	res, err := eng.Uninstall(ctx)
	if err != nil {
		return fmt.Errorf("uninstall: %w", err)
	}
	if o.persist.enabled {
		// After the rules: stopping the unit runs `detour uninstall` again, a no-op.
		if err := unpersist(ctx, o.persist, textOut(s, o.output)); err != nil {
			return err
		}
	}
	if o.output == "json" {
		return writeJSON(s, res)
	}
	if !res.Changed {
		_, err = fmt.Fprintln(s.out, "nothing to remove: detour is not installed")
		return err
	}
	if len(res.Families) > 0 {
		from := joinBackends(res.Replaced)
		if from == "" {
			from = "routing and addresses only" // no backend held rules of detour's
		}
		fmt.Fprintf(s.out, "detour removed (%s; %s)\n", from, joinFamilies(res.Families))
	}
	for _, l := range res.Leftovers {
		fmt.Fprintf(s.out, "removed what was left behind: %s\n", l)
	}
	return nil
}

func joinFamilies(fs []redirect.Family) string {
	parts := make([]string, len(fs))
	for i, f := range fs {
		parts[i] = string(f)
	}
	return strings.Join(parts, ", ")
}

// sweep is `uninstall --stale`: the stale scopes go, nothing else.
func sweep(ctx context.Context, eng *redirect.Engine, output string, s streams) error {
	res, err := eng.Sweep(ctx)
	if err != nil {
		return fmt.Errorf("uninstall --stale: %w", err)
	}
	if output == "json" {
		// The list the user asked for: [] when there was nothing stale,
		// where Result leaves it out.
		out := struct {
			redirect.Result
			Leftovers []string `json:"leftovers"`
		}{res, res.Leftovers}
		if out.Leftovers == nil {
			out.Leftovers = []string{}
		}
		return writeJSON(s, out)
	}
	if !res.Changed {
		_, err = fmt.Fprintln(s.out, "nothing to remove: no stale scope of detour's")
		return err
	}
	for _, l := range res.Leftovers {
		fmt.Fprintf(s.out, "removed what was left behind: %s\n", l)
	}
	return nil
}
