//go:build !unix

package controlplane

import "errors"

func mkfifo(string) error { return errors.ErrUnsupported }
