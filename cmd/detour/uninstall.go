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
}

func newUninstallCmd(s streams, g *globalOptions) *cobra.Command {
	o := &uninstallOptions{}
	cmd := &cobra.Command{
		Use:   "uninstall [flags]",
		Short: "Remove exactly what detour installed, in every family and table",
		Long: `Uninstall removes the chains named DETOUR_*, the rules carrying detour's ownership
comment and the TPROXY routing, and nothing else. It succeeds, changing nothing, when
detour is not installed. It refuses when it finds DETOUR_* chains it does not own.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return runUninstall(cmd.Context(), o, g, s)
		},
	}
	bindNetNSFlag(cmd.Flags(), &o.netns)
	output(cmd.Flags(), &o.output)
	cmd.Flags().BoolVar(&o.persist.enabled, "persist", false, persistUsage)
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
	if err := checkPersist(o.persist, nsPath, false); err != nil {
		return err
	}
	eng, err := g.engine(nsPath, netfilter.AnyBackend, s.err)
	if err != nil {
		return err
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
	from := joinBackends(res.Replaced)
	if from == "" {
		from = "routing and addresses only" // no backend held rules of detour's
	}
	_, err = fmt.Fprintf(s.out, "detour removed (%s; %s)\n", from, joinFamilies(res.Families))
	return err
}

func joinFamilies(fs []redirect.Family) string {
	parts := make([]string, len(fs))
	for i, f := range fs {
		parts[i] = string(f)
	}
	return strings.Join(parts, ", ")
}
