//go:build !linux

package cni

import "errors"

func netnsGone(path string) (bool, error) { return path == "", errors.ErrUnsupported }

func netnsCookie(string) (uint64, error) { return 0, errors.ErrUnsupported }
