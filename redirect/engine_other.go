//go:build !linux

package redirect

import (
	"context"
	"errors"
)

// Installing is Linux-only; planning and rendering work everywhere.

func (e *Engine) facts(context.Context, Config) (Facts, error) { return Facts{}, errors.ErrUnsupported }

func (e *Engine) enter(fn func() error) error {
	if e.NetNS != "" {
		return errors.ErrUnsupported
	}
	return fn()
}

func (e *Engine) observeNet(p Plan) (netView, error) {
	if e.net != nil {
		return e.net(p)
	}
	return nil, errors.ErrUnsupported
}

func (e *Engine) lockNetNS(context.Context) (func(), error) { return func() {}, nil }
