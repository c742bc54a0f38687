//go:build !linux

package netns

import "errors"

// Do runs fn; entering another network namespace is Linux-only.
func Do(path string, fn func() error) error {
	if path == "" {
		return fn()
	}
	return errors.ErrUnsupported
}

// DoFd runs fn; entering another network namespace is Linux-only.
func DoFd(fd int, fn func() error) error {
	if fd == 0 {
		return fn()
	}
	return errors.ErrUnsupported
}

// ErrNotNetNS is returned by Check for a path that is not a network namespace.
var ErrNotNetNS = errors.New("not a network namespace")

// Check is Linux-only.
func Check(path string) error { return errors.ErrUnsupported }
