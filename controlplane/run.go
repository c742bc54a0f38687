package controlplane

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"time"

	"github.com/detour-mesh/detour/redirect"
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
	// NACKBackoff: see ServerOptions.
	NACKBackoff time.Duration
	// Logger; nil discards.
	Logger *slog.Logger
	// Listening, when set, is called with the bound addresses once both
	// listeners are open (the HTTP one is nil when off).
	Listening func(xds, http net.Addr)
}

// TLSConfig builds the xDS server's TLS configuration from PEM files. Invalid
// files are errors matching redirect.ErrInvalid, naming the flag.
func TLSConfig(certFile, keyFile, clientCAFile string) (*tls.Config, error) {
	if certFile == "" && keyFile == "" && clientCAFile == "" {
		return nil, nil
	}
	if certFile == "" || keyFile == "" {
		return nil, &redirect.FieldError{Field: "tls-cert/tls-key", Value: certFile + "," + keyFile, Reason: "must be given together"}
	}
	cert, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		return nil, &redirect.FieldError{Field: "tls-cert", Value: certFile, Reason: "is not a usable certificate and key: " + err.Error()}
	}
	cfg := &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
	if clientCAFile != "" {
		pem, err := os.ReadFile(clientCAFile)
		if err != nil {
			return nil, &redirect.FieldError{Field: "client-ca", Value: clientCAFile, Reason: "cannot be read: " + err.Error()}
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, &redirect.FieldError{Field: "client-ca", Value: clientCAFile, Reason: "holds no PEM certificate"}
		}
		cfg.ClientCAs = pool
		cfg.ClientAuth = tls.RequireAndVerifyClientCert
	}
	return cfg, nil
}

// Run serves ADS and the HTTP endpoints from o.Source until ctx ends, then
// stops gracefully. It returns the source's error when the first mesh cannot
// be produced (matching redirect.ErrInvalid when it is invalid).
func Run(ctx context.Context, o RunOptions) error {
	if o.Source == nil {
		return errors.New("run control plane: no source")
	}
	log := o.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	tlsCfg, err := TLSConfig(o.TLSCert, o.TLSKey, o.ClientCA)
	if err != nil {
		return err
	}
	srv := NewServer(ServerOptions{Logger: log, NACKBackoff: o.NACKBackoff, TLS: tlsCfg})

	xdsAddr := o.XDSAddress
	if xdsAddr == "" {
		xdsAddr = DefaultXDSAddress
	}
	xl, err := net.Listen("tcp", xdsAddr)
	if err != nil {
		return fmt.Errorf("listen for xds: %w", err)
	}
	var hl net.Listener
	httpAddr := o.HTTPAddress
	if httpAddr == "" {
		httpAddr = DefaultHTTPAddress
	}
	if httpAddr != "off" {
		if hl, err = net.Listen("tcp", httpAddr); err != nil {
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
	log.Info("control plane listening", "xds", xl.Addr().String(), "http", addrOrOff(httpAddrBound), "tls", tlsCfg != nil,
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
	srv.Stop(5 * time.Second)
	log.Info("control plane stopped")
	return result
}

func addrOrOff(a net.Addr) string {
	if a == nil {
		return "off"
	}
	return a.String()
}
