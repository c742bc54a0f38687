package main

import (
	"context"
	"errors"
	"fmt"

	"github.com/spf13/cobra"

	"github.com/detour-mesh/detour/redirect"
)

type checkOptions struct {
	in     planInput
	output string
}

func newCheckCmd(s streams, g *globalOptions) *cobra.Command {
	o := &checkOptions{}
	cmd := &cobra.Command{
		Use:   "check [flags]",
		Short: "Compare the installed rules with the plan: exit 0 same, 3 drift, 4 not installed",
		Long: `Check plans the configuration given by the same flags, files and environment as
install, and compares it with what the namespace holds. It prints the difference and
exits 3 when they differ, 4 when detour is not installed at all.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			o.in.fromEnv()
			return runCheck(cmd.Context(), o, g, s)
		},
	}
	g.later(cmd, func() { o.in.bind(cmd.Flags()) })
	output(cmd.Flags(), &o.output)
	return cmd
}

func runCheck(ctx context.Context, o *checkOptions, g *globalOptions, s streams) error {
	if err := checkOutput(o.output); err != nil {
		return err
	}
	p, err := o.in.load(ctx, g, s)
	if err != nil {
		return err
	}
	drift, err := p.eng.Check(ctx, p.plan)
	if errors.Is(err, redirect.ErrNotInstalled) {
		if o.output == "json" {
			// A script parses stdout whatever the exit code (explain -o json
			// prints its document with exit 4 too).
			if err := writeJSON(s, checkReport{Drift: redirect.Drift{Families: []redirect.FamilyDrift{}}}); err != nil {
				return err
			}
		}
		return withCode(exitAbsent, err)
	}
	if err != nil {
		return fmt.Errorf("check: %w", err)
	}
	if o.output == "json" {
		if err := writeJSON(s, checkReport{Installed: true, Drift: drift}); err != nil {
			return err
		}
		if !drift.Empty() {
			return &silentError{exitDrift}
		}
		return nil
	}
	if drift.Empty() {
		_, err := fmt.Fprintln(s.out, "in sync: the installed rules match the plan")
		return err
	}
	fmt.Fprint(s.out, drift.String())
	return withCode(exitDrift, errors.New("the installed rules differ from the plan (see the diff above)"))
}

// checkReport is `check -o json`: whether detour is installed (as in `status
// -o json`; false with exit 4) and the families that differ from the plan.
type checkReport struct {
	Installed bool `json:"installed"`
	redirect.Drift
}
