package main

import (
	"errors"
	"fmt"
	"io"

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
