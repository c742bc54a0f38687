//go:build !linux

package cni

import "errors"

func netnsGone(path string) (bool, error) { return path == "", errors.ErrUnsupported }
