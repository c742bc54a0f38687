package webhook

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"time"

	"k8s.io/client-go/kubernetes"

	"github.com/detour-mesh/detour/controlplane/kube"
	"github.com/detour-mesh/detour/inject"
	"github.com/detour-mesh/detour/internal/meshconfig"
	"github.com/detour-mesh/detour/internal/tcplisten"
)

// Defaults of the server.
const (
	DefaultAddress     = ":15017"
	DefaultRotateEvery = 12 * time.Hour
	// DefaultActivateDelay is how long a rotation waits between putting the
	// new CA into the caBundle and serving the certificate it signed: the API
	// server picks configuration changes up through a watch, within a second
	// or two.
	DefaultActivateDelay = 10 * time.Second
)

// Options configure a Server. The zero value of each field is its default.
type Options struct {
	// Client talks to the API server (the configuration, /version); when nil,
	// one is built from Kubeconfig ("" = in-cluster, then $KUBECONFIG), as the
	// control plane's Kubernetes source builds its own.
	Client     kubernetes.Interface
	Kubeconfig string
	// Mesh is the mesh-wide configuration; zero = meshconfig.Default().
	Mesh meshconfig.Config
	// PodNamespace and PodName are the control plane's own pod. When Mesh
	// leaves injection.detourImage unset and the injector adds a detour
	// container, New reads that pod and injects its image (OwnImage).
	PodNamespace, PodName string
	// Bootstrap renders the sidecar's bootstrap; required.
	Bootstrap inject.BootstrapFunc
	// Address is where the HTTPS server listens; "" = DefaultAddress.
	Address string
	// Listener, when set, is used instead of listening on Address.
	Listener net.Listener

	// CertFile and KeyFile, when set, are the serving certificate (reloaded
	// when they change); CAFile, when also set, is the bundle written into
	// the configuration's caBundle (otherwise the caBundle is left to whoever
	// manages it, e.g. cert-manager's CA injector). When CertFile is empty the
	// server issues its own (SelfSigned) for DNSNames and IPs, valid for
	// three RotateEvery periods, and rotates it every RotateEvery.
	CertFile, KeyFile, CAFile string
	DNSNames                  []string
	IPs                       []net.IP
	RotateEvery               time.Duration
	ActivateDelay             time.Duration

	// Configuration is the MutatingWebhookConfiguration the server owns.
	Configuration ConfigurationOptions
	// Log; nil discards.
	Log *slog.Logger
	// Observe, when set, receives each admission's duration (Handler.Observe).
	Observe func(time.Duration)
}

// Server is the injection webhook of the control plane.
type Server struct {
	o        Options
	handler  *Handler
	self     *SelfSigned
	files    *Files
	log      *slog.Logger
	ready    chan struct{}
	injector *inject.Injector
}

// New checks o, reads the API server's version (to choose native or classic
// sidecars when the mesh config says auto), and prepares the certificate.
func New(ctx context.Context, o Options) (*Server, error) {
	if o.Bootstrap == nil {
		return nil, errors.New("webhook: Options.Bootstrap is required")
	}
	if o.Client == nil {
		c, err := kube.NewClient(o.Kubeconfig)
		if err != nil {
			return nil, err
		}
		o.Client = c
	}
	if err := o.Configuration.Validate(); err != nil {
		return nil, err
	}
	if o.Address == "" {
		o.Address = DefaultAddress
	}
	if o.RotateEvery <= 0 {
		o.RotateEvery = DefaultRotateEvery
	}
	if o.ActivateDelay <= 0 {
		o.ActivateDelay = DefaultActivateDelay
	}
	if o.Mesh.Injection.ControlPlane == "" {
		o.Mesh = meshconfig.Default()
	}
	log := o.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	s := &Server{o: o, log: log, ready: make(chan struct{})}

	sidecar := o.Mesh.Injection.Sidecar
	if sidecar == meshconfig.SidecarAuto {
		v, err := o.Client.Discovery().ServerVersion()
		if err != nil {
			return nil, fmt.Errorf("read kubernetes version (to choose the sidecar kind): %w", err)
		}
		if sidecar, err = inject.SidecarFor(sidecar, v.Major, v.Minor); err != nil {
			return nil, err
		}
		log.Info("sidecar kind chosen by the api server's version", "version", v.GitVersion, "sidecar", sidecar)
	}
	io := inject.Options{Mesh: o.Mesh, Sidecar: sidecar, Bootstrap: o.Bootstrap}
	if o.Mesh.Injection.DetourImage == "" && inject.DetourImageNeededBy(o.Mesh.Injection) != "" {
		if o.PodNamespace == "" || o.PodName == "" {
			io.DetourImageUnknown = "the control plane does not know its own pod to take its image from: POD_NAME and POD_NAMESPACE are unset"
		} else {
			img, err := OwnImage(ctx, o.Client, o.PodNamespace, o.PodName)
			if err != nil {
				return nil, err
			}
			io.DetourImage = img
			log.Info("injected detour containers run the control plane's own image", "image", img, "pod", o.PodNamespace+"/"+o.PodName)
		}
	}
	in, err := inject.New(io)
	if err != nil {
		return nil, err
	}
	s.injector = in
	s.handler = &Handler{Injector: in, Log: log, Observe: o.Observe}

	switch {
	case o.CertFile != "" || o.KeyFile != "":
		if o.CertFile == "" || o.KeyFile == "" {
			return nil, errors.New("webhook: the certificate and key files go together")
		}
		s.files = &Files{CertFile: o.CertFile, KeyFile: o.KeyFile}
		if err := s.files.Load(); err != nil {
			return nil, err
		}
	default:
		names, ips := o.DNSNames, o.IPs
		if len(names) == 0 && len(ips) == 0 {
			if names, ips, err = certificateNames(o.Configuration); err != nil {
				return nil, err
			}
		}
		if s.self, err = NewSelfSigned(names, ips, 3*o.RotateEvery); err != nil {
			return nil, err
		}
	}
	return s, nil
}

// Injector is the injector the server answers with.
func (s *Server) Injector() *inject.Injector { return s.injector }

// Handler is the admission handler (for tests and benchmarks).
func (s *Server) Handler() *Handler { return s.handler }

// Ready is closed once the server listens and its configuration is in
// place.
func (s *Server) Ready() <-chan struct{} { return s.ready }

// Rotate issues a new self-signed CA and certificate, puts the CA into the
// configuration's caBundle, waits ActivateDelay and serves the new
// certificate. Run calls it every RotateEvery; it errors with certificates
// from files.
func (s *Server) Rotate(ctx context.Context) error {
	if s.self == nil {
		return errors.New("webhook: the certificate comes from files; rotate it there")
	}
	if err := s.self.Next(); err != nil {
		return err
	}
	if err := ensureConfiguration(ctx, s.o.Client, s.o.Configuration, s.self.Bundle(time.Now())); err != nil {
		return err
	}
	t := time.NewTimer(s.o.ActivateDelay)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
	}
	s.self.Activate()
	s.log.Info("webhook certificate rotated")
	return nil
}

// Run serves until ctx ends: it listens, writes the configuration (with the
// caBundle), and rotates a self-issued certificate.
func (s *Server) Run(ctx context.Context) error {
	ln := s.o.Listener
	if ln == nil {
		var err error
		if ln, err = tcplisten.Listen(s.o.Address); err != nil {
			return fmt.Errorf("listen for the webhook: %w", err)
		}
	}
	var certs Certificates = s.files
	if s.self != nil {
		certs = s.self
	}
	srv := &http.Server{
		Handler:           s.handler,
		ReadHeaderTimeout: 10 * time.Second,
		TLSConfig:         &tls.Config{MinVersion: tls.VersionTLS12, GetCertificate: certs.GetCertificate},
		ErrorLog:          slog.NewLogLogger(s.log.Handler(), slog.LevelDebug),
	}
	errc := make(chan error, 1)
	go func() { errc <- srv.ServeTLS(ln, "", "") }()
	defer func() {
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(sctx)
	}()

	var own []byte
	switch {
	case s.self != nil:
		own = s.self.Bundle(time.Now())
	case s.o.CAFile != "":
		b, err := os.ReadFile(s.o.CAFile)
		if err != nil {
			return fmt.Errorf("read webhook ca bundle: %w", err)
		}
		own = b
	}
	if err := ensureConfiguration(ctx, s.o.Client, s.o.Configuration, own); err != nil {
		return err
	}
	s.log.Info("injection webhook serving", "address", ln.Addr().String(), "families", tcplisten.Families(ln.Addr()), "configuration", s.o.Configuration.withDefaults().Name,
		"sidecar", map[bool]string{true: "native", false: "classic"}[s.injector.Native()])
	close(s.ready)

	var tick <-chan time.Time
	if s.self != nil {
		t := time.NewTicker(s.o.RotateEvery)
		defer t.Stop()
		tick = t.C
	}
	for {
		select {
		case <-ctx.Done():
			return nil
		case err := <-errc:
			return fmt.Errorf("serve the webhook: %w", err)
		case <-tick:
			if err := s.Rotate(ctx); err != nil && ctx.Err() == nil {
				// The current certificate stays valid for two more periods.
				s.log.Warn("rotate webhook certificate", "error", err)
			}
		}
	}
}

// certificateNames are the names the API server checks the certificate
// against: the URL's host, or the Service's DNS names.
func certificateNames(o ConfigurationOptions) ([]string, []net.IP, error) {
	if o.URL == "" {
		c := o.withDefaults()
		return []string{c.Service + "." + c.Namespace + ".svc", c.Service + "." + c.Namespace + ".svc.cluster.local"}, nil, nil
	}
	u, err := url.Parse(o.URL)
	if err != nil || u.Scheme != "https" || u.Hostname() == "" || (u.Path != "" && u.Path != "/") {
		return nil, nil, fmt.Errorf("webhook url %q is not https://host:port", o.URL)
	}
	if ip := net.ParseIP(u.Hostname()); ip != nil {
		return nil, []net.IP{ip}, nil
	}
	return []string{u.Hostname()}, nil, nil
}
