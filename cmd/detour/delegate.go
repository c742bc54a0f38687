package main

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/detour-mesh/detour/internal/sibling"
)

// The binary that serves the delegated subcommands.
const cpBinary = "detour-cp"

// delegatedCommand is a subcommand that lives in another of detour's
// binaries: detour stays lean and execs that binary for it. detour-cp holds
// the Kubernetes client, Envoy protos and gRPC, and the CNI node installer
// (its plugin-token request links net/http and crypto/tls, which would cost
// every start of detour, and of the CNI plugin, milliseconds).
type delegatedCommand struct {
	name, short string
	binary      string
}

// delegatedCommands are the subcommands detour hands to another binary;
// adding one is one line here.
func delegatedCommands() []delegatedCommand {
	return []delegatedCommand{
		{"control-plane", "Serve Envoy sidecars their listeners and clusters over ADS (xDS); runs detour-cp", cpBinary},
		{"bootstrap", "Print the Envoy bootstrap of a workload (ADS to the control plane); runs detour-cp", cpBinary},
		{"inject", "Add the detour sidecar to Kubernetes manifests (or remove it: --uninject); runs detour-cp", cpBinary},
		{"cni", "Put the detour-cni plugin in place on a Kubernetes node (install, uninstall, ready); runs detour-cp", cpBinary},
	}
}

// delegator finds and execs the binary of a delegated command. Its fields
// are the seams tests set.
type delegator struct {
	// args is detour's whole command line after the program name; the
	// delegated binary gets it unchanged.
	args []string
	// executable returns detour's own path (os.Executable).
	executable func() (string, error)
	// lookPath finds a program on PATH (exec.LookPath).
	lookPath func(string) (string, error)
	// exec replaces the process (syscall.Exec); it returns only on failure.
	exec func(path string, argv, env []string) error
}

func newDelegator(args []string) *delegator {
	return &delegator{args: args, executable: os.Executable, lookPath: exec.LookPath, exec: syscall.Exec}
}

func (d *delegator) commands() []*cobra.Command {
	var cmds []*cobra.Command
	for _, c := range delegatedCommands() {
		cmds = append(cmds, &cobra.Command{
			Use:   c.name,
			Short: c.short,
			Long: c.short + `.

` + c.binary + ` (next to detour, or on PATH) serves this command: detour runs it with
the same arguments. ` + "`" + c.binary + " " + c.name + " --help`" + ` lists its flags.`,
			// The delegated binary parses the flags, --help included.
			DisableFlagParsing: true,
			RunE: func(cmd *cobra.Command, _ []string) error {
				return d.run(c)
			},
		})
	}
	return cmds
}

// run execs c's binary with detour's arguments. It returns only when that
// binary cannot be found or started (exit 1).
func (d *delegator) run(c delegatedCommand) error {
	path, err := d.find(c.binary)
	if err != nil {
		return fmt.Errorf("detour %s is served by %s: %w", c.name, c.binary, err)
	}
	argv := append([]string{path}, d.args...)
	if err := d.exec(path, argv, os.Environ()); err != nil {
		return fmt.Errorf("run %s: %w", path, err)
	}
	return nil
}

// find returns the binary named bin next to detour's own executable, else on PATH.
func (d *delegator) find(bin string) (string, error) {
	beside, ok := sibling.Beside(d.executable, bin)
	if ok {
		return beside, nil
	}
	path, err := d.lookPath(bin)
	if err == nil {
		return path, nil
	}
	if !errors.Is(err, exec.ErrNotFound) {
		return "", fmt.Errorf("look up %s on PATH: %w", bin, err)
	}
	if beside == "" {
		return "", fmt.Errorf("%s is not on PATH; install it (make build builds bin/%s)", bin, bin)
	}
	return "", fmt.Errorf("%s is neither next to detour (%s) nor on PATH; install it there (make build builds bin/%s)", bin, beside, bin)
}
