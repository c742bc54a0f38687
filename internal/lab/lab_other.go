//go:build !linux

package lab

import (
	"context"
	"errors"
)

// Options name a lab (see the Linux implementation).
type Options struct {
	Prefix              string
	PodRole, RemoteRole string
}

// Lab needs Linux network namespaces.
type Lab struct{}

// New returns errors.ErrUnsupported: network namespaces are Linux only.
func New(context.Context, Options) (*Lab, error) { return nil, errors.ErrUnsupported }

// Close does nothing.
func (l *Lab) Close() error { return nil }

// RemoveLeftovers returns errors.ErrUnsupported.
func RemoveLeftovers(context.Context, string) ([]string, error) { return nil, errors.ErrUnsupported }
