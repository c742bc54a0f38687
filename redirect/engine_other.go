//go:build !linux

package redirect

import (
	"context"
	"errors"
)

// The iptables backend is Linux-only; planning works everywhere.

func (e *Engine) facts(context.Context, Config) (Facts, error) { return Facts{}, errors.ErrUnsupported }
func (e *Engine) install(context.Context, Plan) (Result, error) {
	return Result{}, errors.ErrUnsupported
}
func (e *Engine) uninstall(context.Context) (Result, error)  { return Result{}, errors.ErrUnsupported }
func (e *Engine) check(context.Context, Plan) (Drift, error) { return Drift{}, errors.ErrUnsupported }
func (e *Engine) status(context.Context) (Status, error)     { return Status{}, errors.ErrUnsupported }
func (e *Engine) explain(context.Context, Conn) (KernelVerdict, error) {
	return KernelVerdict{}, errors.ErrUnsupported
}
