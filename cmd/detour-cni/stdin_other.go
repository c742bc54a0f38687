//go:build detour_lean && !linux

package main

import "errors"

// refeedStdin is Linux-only (memfd): a hand-over fails elsewhere.
func refeedStdin([]byte) error { return errors.ErrUnsupported }
