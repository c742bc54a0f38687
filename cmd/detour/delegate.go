package main

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"

	"github.com/spf13/cobra"
)

// cpBinary is the control-plane binary that the delegated subcommands run.
const cpBinary = "detour-cp"

// delegatedCommand is a subcommand that lives in detour-cp: detour stays lean
// (no Kubernetes client, Envoy protos or gRPC) and execs detour-cp for it.
type delegatedCommand struct {
	name, short string
}

// delegatedCommands are the subcommands detour hands to detour-cp; adding one
// is one line here.
func delegatedCommands() []delegatedCommand {
	return []delegatedCommand{
		{"control-plane", "Serve Envoy sidecars their listeners and clusters over ADS (xDS); runs detour-cp"},
		{"bootstrap", "Print the Envoy bootstrap of a workload (ADS to the control plane); runs detour-cp"},
		{"inject", "Add the detour sidecar to Kubernetes manifests (or remove it: --uninject); runs detour-cp"},
	}
}

// delegator finds and execs detour-cp. Its fields are the seams tests set.
type delegator struct {
	// args is detour's whole command line after the program name; detour-cp
	// gets it unchanged.
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

detour-cp (next to detour, or on PATH) serves this command: detour runs it with
the same arguments. ` + "`detour-cp " + c.name + " --help`" + ` lists its flags.`,
			// detour-cp parses the flags, --help included.
			DisableFlagParsing: true,
			RunE: func(cmd *cobra.Command, _ []string) error {
				return d.run(c.name)
			},
		})
	}
	return cmds
}

// run execs detour-cp with detour's arguments. It returns only when detour-cp
// cannot be found or started (exit 1).
func (d *delegator) run(name string) error {
	path, err := d.find()
	if err != nil {
		return fmt.Errorf("detour %s is served by %s: %w", name, cpBinary, err)
	}
	argv := append([]string{path}, d.args...)
	if err := d.exec(path, argv, os.Environ()); err != nil {
		return fmt.Errorf("run %s: %w", path, err)
	}
	return nil
}

// find returns detour-cp next to detour's own executable, else on PATH.
func (d *delegator) find() (string, error) {
	var beside string
	if exe, err := d.executable(); err == nil {
		if resolved, err := filepath.EvalSymlinks(exe); err == nil {
			exe = resolved
		}
		beside = filepath.Join(filepath.Dir(exe), cpBinary)
		if fi, err := os.Stat(beside); err == nil && !fi.IsDir() && fi.Mode()&0o111 != 0 {
			return beside, nil
		}
	}
	path, err := d.lookPath(cpBinary)
	if err == nil {
		return path, nil
	}
	if !errors.Is(err, exec.ErrNotFound) {
		return "", fmt.Errorf("look up %s on PATH: %w", cpBinary, err)
	}
	if beside == "" {
		return "", fmt.Errorf("%s is not on PATH; install it (make build builds bin/%s)", cpBinary, cpBinary)
	}
	return "", fmt.Errorf("%s is neither next to detour (%s) nor on PATH; install it there (make build builds bin/%s)", cpBinary, beside, cpBinary)
}
