package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/detour-mesh/detour/redirect"
)

// This file is detour-cni's command line: `detour-cni cni install|uninstall|ready`,
// which `detour cni …` execs with its own arguments. The plugin itself takes
// no arguments (the runtime passes CNI_* variables), so main tells the two
// apart by the arguments.

// runCLI runs one command line until SIGINT or SIGTERM and returns the exit code.
func runCLI(args []string) int {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	return run(ctx, args, os.Stdin, os.Stdout, os.Stderr)
}

// streams are the command's standard files; tests pass buffers.
type streams struct {
	in       io.Reader
	out, err io.Writer
}

// run executes one command line and returns the process exit code.
func run(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	s := streams{in: stdin, out: stdout, err: stderr}
	root := newRootCmd(s)
	root.SetArgs(args)
	root.SetIn(stdin)
	root.SetOut(stdout)
	root.SetErr(stderr)
	return exitCode(root.ExecuteContext(ctx), stderr)
}

func newRootCmd(s streams) *cobra.Command {
	root := &cobra.Command{
		Use:   "detour-cni",
		Short: "detour's CNI plugin, and the node installer that puts it in place",
		Long: `Run by a container runtime (CNI_COMMAND and the other CNI_* variables, the
network configuration on stdin), detour-cni installs a pod's redirection. Run
with arguments, it is the node installer: ` + "`detour-cni cni install`" + ` is what
` + "`detour cni install`" + ` runs (the CNI DaemonSet's entry point).`,
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	// detour's root flags: `detour -v cni install …` runs this binary with
	// the same arguments.
	var (
		verbose  bool
		lockWait time.Duration
		cgroup   string
	)
	pf := root.PersistentFlags()
	pf.BoolVarP(&verbose, "verbose", "v", false, "accepted for detour's command lines")
	pf.DurationVar(&lockWait, "lock-wait", 10*time.Second, "accepted for detour's command lines")
	pf.StringVar(&cgroup, "cgroup", "", "accepted for detour's command lines")
	for _, f := range []string{"verbose", "lock-wait", "cgroup"} {
		_ = pf.MarkHidden(f)
	}
	root.SetFlagErrorFunc(func(c *cobra.Command, err error) error {
		return &flagError{err}
	})
	root.AddCommand(newCNICmd(s), newVersionCmd(s))
	return root
}

func newVersionCmd(s streams) *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "Print detour-cni's version",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			_, err := fmt.Fprintln(s.out, "detour-cni", version)
			return err
		},
	}
}

// Exit codes: the subset of detour's (README.md documents them) that the
// node installer uses.
const (
	exitOK      = 0
	exitFailure = 1 // runtime failure
	exitUsage   = 2 // invalid input or usage: nothing on the node changed
)

// exitError carries an exit code other than the default for its error.
type exitError struct {
	code int
	err  error
}

func (e *exitError) Error() string { return e.err.Error() }
func (e *exitError) Unwrap() error { return e.err }

func withCode(code int, err error) error {
	if err == nil {
		return nil
	}
	return &exitError{code: code, err: err}
}

// usageError marks a command-line mistake (exit 2).
func usageError(format string, args ...any) error {
	return &exitError{code: exitUsage, err: fmt.Errorf(format, args...)}
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

// exitCode prints err (if any) and maps it to the process exit code. Messages
// start with "detour:" as they did when detour ran the command itself.
func exitCode(err error, stderr io.Writer) int {
	if err == nil {
		return exitOK
	}
	fmt.Fprintln(stderr, "detour:", err)
	var ee *exitError
	switch {
	case errors.As(err, &ee):
		return ee.code
	case errors.Is(err, redirect.ErrInvalid):
		return exitUsage
	case isFlagError(err):
		return exitUsage
	}
	return exitFailure
}
