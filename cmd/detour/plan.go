package main

import (
	"context"
	"fmt"

	"github.com/spf13/cobra"

	"github.com/detour-mesh/detour/redirect"
)

type planOptions struct {
	config configOptions
	netns  string
	output string
}

func newPlanCmd(s streams, g *globalOptions) *cobra.Command {
	o := &planOptions{}
	cmd := &cobra.Command{
		Use:   "plan [flags]",
		Short: "Print the rules install would apply, changing nothing (no root needed)",
		Long: `Plan prints, per IP family, the rules install would apply for the configuration,
in iptables-save form. It needs neither root nor iptables. Whether IPv6 is planned
under ipFamilies auto follows the namespace plan runs in (or --netns).`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return runPlan(cmd.Context(), o, g, s)
		},
	}
	bindConfigFlags(cmd.Flags(), &o.config)
	bindNetNSFlag(cmd.Flags(), &o.netns)
	output(cmd.Flags(), &o.output)
	return cmd
}

func runPlan(ctx context.Context, o *planOptions, g *globalOptions, s streams) error {
	if err := checkOutput(o.output); err != nil {
		return err
	}
	plan, _, err := loadPlan(ctx, &o.config, o.netns, g, s)
	if err != nil {
		return err
	}
	return printPlan(s, plan, o.output)
}

// loadPlan is the shared front half of plan, check and validate: the config from
// its sources, the namespace's facts, the plan.
func loadPlan(ctx context.Context, co *configOptions, netns string, g *globalOptions, s streams) (redirect.Plan, *redirect.Engine, error) {
	cfg, err := co.load(s.in)
	if err != nil {
		return redirect.Plan{}, nil, err
	}
	nsPath, err := netnsPath(netns)
	if err != nil {
		return redirect.Plan{}, nil, err
	}
	eng := g.engine(nsPath, s.err)
	facts, err := eng.Facts(ctx, cfg)
	if err != nil {
		return redirect.Plan{}, nil, fmt.Errorf("read network namespace facts: %w", err)
	}
	plan, err := redirect.NewPlan(cfg, facts)
	if err != nil {
		return redirect.Plan{}, nil, err
	}
	return plan, eng, nil
}

func printPlan(s streams, p redirect.Plan, output string) error {
	if output == "json" {
		return writeJSON(s, p)
	}
	_, err := fmt.Fprint(s.out, p.String())
	return err
}
