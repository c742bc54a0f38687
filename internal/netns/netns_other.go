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
