//go:build !linux

package cni

import "errors"

func ebpfPaths(pinDir, cgroupRoot string) error {
	if pinDir == "" && cgroupRoot == "" {
		return nil
	}
	return errors.ErrUnsupported
}
