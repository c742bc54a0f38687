package main

import (
	"errors"
	"fmt"
	"os"
	"strings"

	"github.com/spf13/cobra"
)

func newRootCmd(s streams, d *delegator) *cobra.Command {
	root := &cobra.Command{
		Use:   "detour",
		Short: "Send a workload's traffic through its sidecar proxy, without touching the app",
		Long: `detour installs the kernel redirection (iptables, nftables or eBPF, --backend)
that sends a workload's TCP and DNS traffic through its sidecar proxy. The control plane that serves the
proxy matching listeners is the detour-cp binary; control-plane, bootstrap,
inject and cni run it.`,
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	g := &globalOptions{delegate: d}
	root.PersistentFlags().BoolVarP(&g.verbose, "verbose", "v", false, "log what detour does (debug lines on stderr)")
	bindLockWaitFlag(root.PersistentFlags(), &g.lockWait)
	root.PersistentFlags().Var(cgroupFlag{&g.cgroup, &g.uninstalling}, "cgroup", "backend ebpf: capture the processes below this cgroup v2 directory (a VM service or slice; the proxy must run below it too) instead of a network namespace")
	g.bpfPinDir, g.bpfRoot = os.Getenv("DETOUR_EBPF_PIN_DIR"), os.Getenv("DETOUR_EBPF_CGROUP_ROOT")
	g.ebpfEnvErr = checkEBPFEnv(os.LookupEnv)
	root.SetFlagErrorFunc(func(c *cobra.Command, err error) error {
		return &flagError{err}
	})
	root.AddCommand(
		newInstallCmd(s, g),
		newUninstallCmd(s, g),
		newPlanCmd(s, g),
		newCheckCmd(s, g),
		newStatusCmd(s, g),
		newValidateCmd(s, g),
		newExplainCmd(s, g, d),
		newVersionCmd(s),
	)
	root.AddCommand(d.commands()...)
	g.bindFlags(root, d.args)
	return root
}

// flagError is a flag parsing failure (exit 2).
type flagError struct{ err error }

func (e *flagError) Error() string { return e.err.Error() }
func (e *flagError) Unwrap() error { return e.err }

func isFlagError(err error) bool {
	var fe *flagError
	if errors.As(err, &fe) {
		return true
	}
	// cobra reports unknown commands and wrong argument counts as plain errors.
	msg := err.Error()
	return strings.HasPrefix(msg, "unknown command") || strings.HasPrefix(msg, "unknown flag") ||
		strings.Contains(msg, "arg(s), received") || strings.HasPrefix(msg, "invalid argument")
}

func newVersionCmd(s streams) *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "Print detour's version",
		Args:  cobra.NoArgs,
		// Nothing to interrupt cleanly: no signal handler (see run).
		PersistentPreRun: func(*cobra.Command, []string) {},
		RunE: func(cmd *cobra.Command, _ []string) error {
			_, err := fmt.Fprintln(s.out, "detour", version)
			return err
		},
	}
}
