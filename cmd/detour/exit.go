package main

import (
	"errors"
	"fmt"
	"io"

	"github.com/detour-mesh/detour/redirect"
)

// Exit codes. README.md documents them; keep the two in step.
const (
	exitOK       = 0
	exitFailure  = 1 // runtime failure: the host was restored to how it was, or left as the message says
	exitUsage    = 2 // invalid input or usage: nothing on the host changed
	exitDrift    = 3 // check: installed rules differ from the plan
	exitAbsent   = 4 // check, explain: nothing is installed
	exitNotValid = 5 // validate, explain --live: connections are not redirected as planned
	exitNoAnswer = 6 // validate, explain --live: a probe got no answer within --timeout, and none was proven not redirected
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

// exitCode prints err (if any) and maps it to the process exit code.
func exitCode(err error, stderr io.Writer) int {
	if err == nil {
		return exitOK
	}
	var silent *silentError
	if errors.As(err, &silent) {
		return silent.code
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

// silentError is an exit code whose message the command already printed.
type silentError struct{ code int }

func (e *silentError) Error() string { return fmt.Sprintf("exit status %d", e.code) }
