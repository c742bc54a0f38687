package redirect

import (
	"github.com/detour-mesh/detour/internal/netns"
)

var _ netView = netState{}

// enter runs fn on an OS thread inside NetNS.
func (e *Engine) enter(fn func() error) error { return netns.Do(e.NetNS, fn) }

// observeNet reads the routing and addresses of ours (the calling thread's
// namespace) against what p wants.
func (e *Engine) observeNet(p Plan) (netView, error) {
	if e.net != nil {
		return e.net(p)
	}
	return observeNet(p)
}
