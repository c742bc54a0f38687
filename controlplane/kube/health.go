package kube

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"sync"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"
)

// watchHealth tracks, per resource, whether the informer's list and watch
// work. A resource fails from its failed list or watch until a watch opens
// again: a watch that closes and reopens (as client-go does all the time)
// never shows.
//
// Only a refusal (401, 403: missing RBAC, a revoked token) makes the source
// not ready: it does not go away by itself, and the caches it leaves never
// change again. The API server unreachable, restarting or overloaded does
// not: it comes back by itself, and every replica of the control plane
// going unready at once would take the Service (and the injection webhook
// behind it) away from new proxies and pods for as long — and for up to
// client-go's backoff after the API is back. Such failures are logged
// (Source.Run).
type watchHealth struct {
	mu      sync.Mutex
	failing map[string]watchFailure // resource →
}

type watchFailure struct {
	verb string // list, watch
	err  error
}

func newWatchHealth() *watchHealth {
	return &watchHealth{failing: map[string]watchFailure{}}
}

// failed records that verb of resource failed with err.
func (h *watchHealth) failed(resource, verb string, err error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.failing[resource] = watchFailure{verb: verb, err: err}
}

// watching records that a watch of resource opened; it reports whether the
// resource was failing.
func (h *watchHealth) watching(resource string) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	_, was := h.failing[resource]
	delete(h.failing, resource)
	return was
}

// refused reports whether err is the API server refusing the request: it
// will not work until someone changes the credentials or the RBAC rules.
func refused(err error) bool {
	return apierrors.IsForbidden(err) || apierrors.IsUnauthorized(err)
}

// check returns why the caches are stale, naming each resource whose list or
// watch is refused; nil when none is.
func (h *watchHealth) check() error {
	h.mu.Lock()
	defer h.mu.Unlock()
	var errs []error
	for _, resource := range slices.Sorted(maps.Keys(h.failing)) {
		if f := h.failing[resource]; refused(f.err) {
			errs = append(errs, fmt.Errorf("%s: %s refused: %w", resource, f.verb, f.err))
		}
	}
	return errors.Join(errs...)
}

// Ready implements controlplane.ReadySource: it returns why the mesh is
// stale — a list or watch of a resource refused (401, 403: missing RBAC, a
// revoked token) — naming each resource, or nil. Caches that synced from a
// list but whose watch is refused never see a change again, which only this
// shows.
func (s *Source) Ready() error {
	if err := s.health.check(); err != nil {
		return fmt.Errorf("kubernetes: %w", err)
	}
	return nil
}

// informer registers with f, for obj, an informer whose list and watch report
// to the source's health.
func (s *Source) informer(f informers.SharedInformerFactory, resource string, obj runtime.Object,
	list func(context.Context, metav1.ListOptions) (runtime.Object, error),
	watchFn func(context.Context, metav1.ListOptions) (watch.Interface, error)) cache.SharedIndexInformer {
	return f.InformerFor(obj, func(client kubernetes.Interface, resync time.Duration) cache.SharedIndexInformer {
		lw := &cache.ListWatch{
			ListWithContextFunc: func(ctx context.Context, o metav1.ListOptions) (runtime.Object, error) {
				out, err := list(ctx, o)
				if err != nil && ctx.Err() == nil {
					s.health.failed(resource, "list", err)
				}
				return out, err
			},
			WatchFuncWithContext: func(ctx context.Context, o metav1.ListOptions) (watch.Interface, error) {
				w, err := watchFn(ctx, o)
				switch {
				case err != nil && ctx.Err() == nil:
					s.health.failed(resource, "watch", err)
				case err == nil && s.health.watching(resource):
					s.log.Info("kubernetes watch works again", "resource", resource)
				}
				return w, err
			},
		}
		// The client decides whether the reflector may list through a watch
		// (WatchListClient), as for the factory's own informers.
		return cache.NewSharedIndexInformerWithOptions(cache.ToListWatcherWithWatchListSemantics(lw, client), obj,
			cache.SharedIndexInformerOptions{ResyncPeriod: resync, Indexers: cache.Indexers{cache.NamespaceIndex: cache.MetaNamespaceIndexFunc}})
	})
}
