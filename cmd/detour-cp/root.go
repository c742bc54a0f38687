package main

import (
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/spf13/cobra"
)

// globalOptions are the root flags. detour-cp accepts the same root flags as
// detour, because `detour -v control-plane …` execs `detour-cp` with the same
// arguments.
type globalOptions struct {
	verbose  bool
	lockWait time.Duration // accepted for detour's command lines; unused here
}

func newRootCmd(s streams) *cobra.Command {
	root := &cobra.Command{
		Use:   "detour-cp",
		Short: "detour's control plane: serve Envoy sidecars their listeners, print their bootstrap",
		Long: `detour-cp serves every workload's Envoy the listeners that match the
redirection detour installs for it (control-plane), and prints the Envoy
bootstrap that points a sidecar at it (bootstrap); it also injects sidecars
(inject) and puts the CNI plugin in place on a node (cni). The install path,
detour and detour-cni, is a separate lean binary; ` + "`detour control-plane`" + `,
` + "`detour bootstrap`" + `, ` + "`detour inject`" + ` and ` + "`detour cni`" + ` run this one.`,
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	g := &globalOptions{}
	root.PersistentFlags().BoolVarP(&g.verbose, "verbose", "v", false, "log debug lines on stderr (control-plane: --log-level debug)")
	root.PersistentFlags().DurationVar(&g.lockWait, "lock-wait", 10*time.Second, "accepted for detour's command lines; detour-cp takes no locks")
	_ = root.PersistentFlags().MarkHidden("lock-wait")
	var cgroup string
	root.PersistentFlags().StringVar(&cgroup, "cgroup", "", "accepted for detour's command lines; unused here")
	_ = root.PersistentFlags().MarkHidden("cgroup")
	root.SetFlagErrorFunc(func(c *cobra.Command, err error) error {
		return &flagError{err}
	})
	root.AddCommand(
		newControlPlaneCmd(s, g),
		newBootstrapCmd(s),
		newInjectCmd(s),
		newCNICmd(s),
		newVersionCmd(s),
	)
	strictLists(root)
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
		Short: "Print detour-cp's version",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			_, err := fmt.Fprintln(s.out, "detour-cp", version)
			return err
		},
	}
}
