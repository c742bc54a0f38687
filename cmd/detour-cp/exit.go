package main

import (
	"errors"
	"fmt"
	"io"
	"slices"

	"github.com/spf13/pflag"

	"github.com/detour-mesh/detour/redirect"
)

// Exit codes: the subset of detour's (README.md documents them) that the
// control plane and bootstrap use.
const (
	exitOK      = 0
	exitFailure = 1 // runtime failure
	exitUsage   = 2 // invalid input or usage: nothing was served or printed
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

// exitCode prints err (if any) and maps it to the process exit code. Messages
// start with "detour:" as they do when detour runs this binary.
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

// rejectEmptyFlags refuses a flag given with an empty value (`--namespace ""`,
// `--dns-upstream ""`), for every string and string-list flag of f that was set
// except those named in meaningful, whose empty value is documented. An empty
// value is usually a script's unset variable: falling back to the default
// would serve something else than asked for (all namespaces, the default
// HTTP address instead of none).
func rejectEmptyFlags(f *pflag.FlagSet, meaningful ...string) error {
	var err error
	f.Visit(func(fl *pflag.Flag) {
		if err != nil || slices.Contains(meaningful, fl.Name) {
			return
		}
		empty := false
		switch v := fl.Value.(type) {
		case pflag.SliceValue:
			items := v.GetSlice()
			empty = len(items) == 0 || slices.Contains(items, "")
		default:
			empty = fl.Value.Type() == "string" && fl.Value.String() == ""
		}
		switch {
		case !empty:
		case fl.DefValue == "" || fl.DefValue == "[]":
			// No default to fall back on (--node-id): the flag needs a value.
			err = usageError("--%s \"\" is empty; give it a value", fl.Name)
		default:
			err = usageError("--%s \"\" is empty; leave the flag out for its default (%s)", fl.Name, fl.DefValue)
		}
	})
	return err
}
