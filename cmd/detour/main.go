package main

import (
	"context"
	"errors"
	"io"
	"os"
	"os/signal"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/detour-mesh/detour/internal/cmdgroup"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

func main() {
	// A lean build hands what plainly needs the eBPF backend to detour-ebpf
	// before doing anything else (ebpf.go); it returns when it does not.
	handOverEarly(os.Args[1:])
	os.Exit(run(context.Background(), os.Args[1:], os.Stdin, os.Stdout, os.Stderr))
}

// streams are the command's standard files; tests pass buffers.
type streams struct {
	in       io.Reader
	out, err io.Writer
}

// run executes one command line and returns the process exit code.
func run(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	s := streams{in: stdin, out: stdout, err: stderr}
	root := newRootCmd(s, newDelegator(args))
	// SIGINT and SIGTERM cancel the command's context, so that a lock wait or
	// an apply ends cleanly. The handler (two goroutines, and the threads that
	// start for them) is set up only for a command that runs; version opts out.
	// After the first signal the default action is back: a second one ends
	// a command that is blocked where it does not watch its context (reading
	// a --config FIFO nobody writes), which the handler kept alive forever.
	stop := func() {}
	root.PersistentPreRun = func(cmd *cobra.Command, _ []string) {
		var c context.Context
		c, stop = signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
		go func() {
			<-c.Done()
			stop()
		}()
		cmd.SetContext(c)
	}
	defer func() { stop() }()
	if target, _, err := root.Find(args); err == nil && target != root {
		// cobra builds its completion command on every run; only the
		// root's help, `help` and `completion` (which Find does not know
		// yet) show or run it.
		root.CompletionOptions.DisableDefaultCmd = true
	}
	root.SetArgs(args)
	root.SetIn(stdin)
	root.SetOut(stdout)
	root.SetErr(stderr)
	// After SetOut: the completion command writes to the output set then.
	root.InitDefaultCompletionCmd(args...)
	cmdgroup.RefuseUnknownSubcommands(root)
	err := root.ExecuteContext(ctx)
	// The lean build found the eBPF backend's state only once it held the
	// namespace's lock: the command, which changed nothing, runs again in
	// detour-ebpf.
	if h := (*handOverError)(nil); errors.As(err, &h) {
		err = h.hand()
	}
	return exitCode(err, stderr)
}
