package main

import (
	"context"
	"fmt"
	"os"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/detour-mesh/detour/redirect"
)

type planOptions struct {
	in     planInput
	output string
}

func newPlanCmd(s streams, g *globalOptions) *cobra.Command {
	o := &planOptions{}
	cmd := &cobra.Command{
		Use:   "plan [flags]",
		Short: "Print the rules install would apply, changing nothing (no root needed)",
		Long: `Plan prints, per IP family, the rules install would apply for the configuration,
in the form of the backend the configuration asks for (iptables-restore input for
the iptables backends). With backend auto, which needs a look at the namespace to
decide, it prints the backend auto picks in a namespace that holds no rules of
any tool (the first backend of this build: iptables, the host's default variant).
It needs neither root nor iptables. Whether IPv6 is planned under ipFamilies auto
follows the namespace plan runs in (or --netns).`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			o.in.fromEnv()
			return runPlan(cmd.Context(), o, g, s)
		},
	}
	g.later(cmd, func() { o.in.bind(cmd.Flags()) })
	output(cmd.Flags(), &o.output)
	return cmd
}

func runPlan(ctx context.Context, o *planOptions, g *globalOptions, s streams) error {
	if err := checkOutput(o.output); err != nil {
		return err
	}
	p, err := o.in.load(ctx, g, s)
	if err != nil {
		return err
	}
	if len(p.sshPorts) > 0 {
		fmt.Fprintf(s.err, "detour: %s excluded from inbound capture: SSH (--capture-ssh captures it)\n", joinPorts(p.sshPorts))
	}
	return printPlan(s, p.eng, p.plan, o.output)
}

// planInput is what plan, check, validate and install share: the configuration
// sources, the namespace to act in and the SSH exclusion on a host.
type planInput struct {
	config configOptions
	netns  string
	ssh    sshOptions
}

func (in *planInput) bind(fs *pflag.FlagSet) {
	bindConfigFlags(fs, &in.config)
	bindNetNSFlag(fs, &in.netns)
	bindSSHFlag(&in.ssh, fs.BoolVar)
}

// fromEnv reads what the command takes from its environment besides DETOUR_*.
func (in *planInput) fromEnv() { in.ssh.sshConnection = os.Getenv("SSH_CONNECTION") }

// planned is the front half of every command that plans: the config from its
// sources, the namespace's facts, the plan, and the engine for that namespace.
type planned struct {
	plan     redirect.Plan
	eng      *redirect.Engine
	nsPath   string
	sshPorts []uint16 // SSH ports the plan keeps out of inbound capture
}

func (in *planInput) load(ctx context.Context, g *globalOptions, s streams) (planned, error) {
	cfg, err := in.config.load(s.in)
	if err != nil {
		return planned{}, err
	}
	if g.cgroup != "" && cfg.Backend != redirect.BackendEBPF {
		// Another backend has no cgroup scope: ignoring --cgroup would
		// capture the whole namespace instead of the cgroup asked for.
		return planned{}, usageError("--cgroup: only backend ebpf has a cgroup scope; backend is %q (give --backend ebpf, or leave --cgroup out to capture the whole network namespace)", cfg.Backend)
	}
	nsPath, err := netnsPath(in.netns)
	if err != nil {
		return planned{}, err
	}
	var ssh []uint16
	if nsPath == "" {
		cfg, ssh = excludeSSH(cfg, in.ssh.sshPorts())
	}
	g.stdinDoc, g.pipeDocs = in.config.stdinDoc, in.config.pipeDocs
	eng, err := g.engine(nsPath, cfg.Backend, s.err)
	if err != nil {
		return planned{}, err
	}
	facts, err := eng.Facts(ctx, cfg)
	if err != nil {
		return planned{}, fmt.Errorf("read network namespace facts: %w", err)
	}
	plan, err := redirect.NewPlan(cfg, facts)
	if err != nil {
		return planned{}, err
	}
	return planned{plan: plan, eng: eng, nsPath: nsPath, sshPorts: ssh}, nil
}

// planOutput is `detour plan -o json`: the backend-neutral plan and its
// rendering in the backend the config asks for.
type planOutput struct {
	redirect.Plan
	Rendering redirect.Rendering `json:"rendering"`
}

func printPlan(s streams, eng *redirect.Engine, p redirect.Plan, output string) error {
	r, err := eng.Render(p)
	if err != nil {
		return err
	}
	if output == "json" {
		return writeJSON(s, planOutput{Plan: p, Rendering: r})
	}
	_, err = fmt.Fprint(s.out, p.Format(r))
	return err
}
