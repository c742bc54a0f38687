package main

import (
	"context"
	"io"
	"os"
	"os/signal"
	"syscall"

	"github.com/detour-mesh/detour/internal/cmdgroup"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdin, os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
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
	// After SetOut: the completion command writes to the output set then.
	root.InitDefaultCompletionCmd(args...)
	cmdgroup.RefuseUnknownSubcommands(root)
	return exitCode(root.ExecuteContext(ctx), stderr)
}
