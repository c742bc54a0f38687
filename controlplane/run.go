package controlplane

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"time"

	"github.com/detour-mesh/detour/controlplane/xds"
	"github.com/detour-mesh/detour/internal/tcplisten"
)

// Default listen addresses of `detour control-plane`.
const (
	DefaultXDSAddress  = "127.0.0.1:18000"
	DefaultHTTPAddress = "127.0.0.1:18001"
)

// RunOptions configure Run. Source is required; the zero value of every other
// field means its default.
type RunOptions struct {
	// Source produces the mesh.
	Source Source
	// XDSAddress is where ADS is served; "" means DefaultXDSAddress.
	XDSAddress string
	// HTTPAddress is where /healthz, /readyz, /metrics and /debug/nodes are
	// served; "" means DefaultHTTPAddress, "off" serves no HTTP.
	HTTPAddress string
	// TLSCert and TLSKey (PEM files) serve ADS over TLS.
	TLSCert, TLSKey string
	// ClientCA (a PEM bundle) requires client certificates signed by it, and
	// a request's node id must be one of the certificate's SANs. Needs TLSCert.
	ClientCA string
	// NACKBackoff: see xds.Options.
	NACKBackoff time.Duration
	// MemoryLimit sets the Go runtime's soft memory limit while Run runs;
	// "" means MemoryLimitAuto (a part of the cgroup's memory limit, when
	// it has one). MemoryLimitAdaptive lowers the peak memory but, at 10,000
	// proxies with distinct workloads, made a change several times slower
	// (docs/control-plane.md, Memory).
	MemoryLimit MemoryLimit
	// Logger; nil discards.
	Logger *slog.Logger
	// Listening, when set, is called with the bound addresses once both
	// listeners are open (the HTTP one is nil when off).
	Listening func(xds, http net.Addr)
}

// Run serves ADS and the HTTP endpoints from o.Source until ctx ends, then
// stops: HTTP requests in flight get 5 s, ADS connections are closed at once
// (proxies reconnect). It returns the source's error when the first mesh cannot
// be produced (matching redirect.ErrInvalid when it is invalid).
func Run(ctx context.Context, o RunOptions) error {
	if o.Source == nil {
		return errors.New("run control plane: no source")
	}
	log := o.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	tlsCfg, err := TLSConfig(o.TLSCert, o.TLSKey, o.ClientCA, log)
	if err != nil {
		return err
	}
	if err := o.MemoryLimit.Validate(); err != nil {
		return fmt.Errorf("run control plane: %w", err)
	}
	defer applyMemoryLimit(o.MemoryLimit, log, "/sys/fs/cgroup", "/proc/self/cgroup")()
	xo := xds.Options{Logger: log, NACKBackoff: o.NACKBackoff, TLS: tlsCfg}
	if rs, ok := o.Source.(ReadySource); ok {
		xo.SourceReady = rs.Ready
	}
	srv := NewServer(xo)

	xdsAddr := o.XDSAddress
	if xdsAddr == "" {
		xdsAddr = DefaultXDSAddress
	}
	xl, err := tcplisten.Listen(xdsAddr)
	if err != nil {
		return fmt.Errorf("listen for xds: %w", err)
	}
	var hl net.Listener
	httpAddr := o.HTTPAddress
	if httpAddr == "" {
		httpAddr = DefaultHTTPAddress
	}
	if httpAddr != "off" {
		if hl, err = tcplisten.Listen(httpAddr); err != nil {
			xl.Close()
			return fmt.Errorf("listen for http: %w", err)
		}
	}

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	errc := make(chan error, 3)
	go func() { errc <- srv.ServeXDS(xl) }()
	var hs *http.Server
	if hl != nil {
		hs = &http.Server{Handler: srv.Handler(), ReadHeaderTimeout: 10 * time.Second}
		go func() {
			if err := hs.Serve(hl); err != nil && !errors.Is(err, http.ErrServerClosed) {
				errc <- fmt.Errorf("serve http: %w", err)
				return
			}
			errc <- nil
		}()
	}
	var httpAddrBound net.Addr
	if hl != nil {
		httpAddrBound = hl.Addr()
	}
	log.Info("control plane listening", "xds", xl.Addr().String(), "xds_families", tcplisten.Families(xl.Addr()),
		"http", addrOrOff(httpAddrBound), "http_families", familiesOrOff(httpAddrBound), "tls", tlsCfg != nil,
		"mtls", tlsCfg != nil && tlsCfg.ClientCAs != nil)
	if o.Listening != nil {
		o.Listening(xl.Addr(), httpAddrBound)
	}

	srcErr := make(chan error, 1)
	go func() { srcErr <- o.Source.Run(ctx, srv) }()

	var result error
	select {
	case <-ctx.Done():
	case err := <-srcErr:
		result = err
	case err := <-errc:
		result = err
	}
	cancel()
	if hs != nil {
		sctx, scancel := context.WithTimeout(context.Background(), 5*time.Second)
		_ = hs.Shutdown(sctx)
		scancel()
	}
	srv.Stop()
	log.Info("control plane stopped")
	return result
}

func addrOrOff(a net.Addr) string {
	if a == nil {
		return "off"
	}
	return a.String()
}

// familiesOrOff is tcplisten.Families of a listener's address, or "off".
func familiesOrOff(a net.Addr) string {
	if a == nil {
		return "off"
	}
	return tcplisten.Families(a)
}
