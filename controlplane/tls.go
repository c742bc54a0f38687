package controlplane

import (
	"crypto/tls"
	"crypto/x509"
	"log/slog"
	"os"
	"strconv"
	"sync"
	"time"

	"github.com/detour-mesh/detour/redirect"
)

// TLSConfig builds the xDS server's TLS configuration from PEM files. Invalid
// files are errors matching redirect.ErrInvalid, naming the flag. It returns
// nil when no file is given.
//
// The files are read again when they change (size or modification time, looked
// at on each handshake), so certificates rotate without a restart: new
// connections get the new certificate and are verified against the new client
// CA bundle; established streams keep the session they negotiated. A change
// that does not load (a certificate written before its key, a truncated file)
// is logged and the previous certificate keeps being used until the files
// change again. With clientCAFile the node identity check stays on: a client
// certificate's SANs must name the node id it asks for.
func TLSConfig(certFile, keyFile, clientCAFile string, log *slog.Logger) (*tls.Config, error) {
	if certFile == "" && keyFile == "" && clientCAFile == "" {
		return nil, nil
	}
	if err := pairedFiles("tls-cert", certFile, "tls-key", keyFile); err != nil {
		return nil, err
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	r := &tlsReloader{certFile: certFile, keyFile: keyFile, caFile: clientCAFile, log: log}
	st, err := r.stat()
	if err != nil {
		return nil, err
	}
	if r.current, err = r.load(); err != nil {
		return nil, err
	}
	r.loaded = st
	cfg := &tls.Config{MinVersion: tls.VersionTLS12, GetConfigForClient: r.configForClient}
	if clientCAFile != "" {
		// The server reads ClientAuth from here to require node identities;
		// the per-connection config carries the same value.
		cfg.ClientAuth = tls.RequireAndVerifyClientCert
		cfg.ClientCAs = r.current.ClientCAs
	}
	cfg.Certificates = r.current.Certificates
	return cfg, nil
}

// tlsReloader keeps the TLS configuration of the files it was built from.
type tlsReloader struct {
	certFile, keyFile, caFile string
	log                       *slog.Logger

	mu      sync.Mutex
	current *tls.Config
	loaded  fileStamps // the files current was loaded from
	failed  fileStamps // the last files that did not load (not retried until they change)
}

// fileStamp identifies a version of a file: a rewrite or a rename over it (a
// Kubernetes secret update swaps a symlink) changes one of these.
type fileStamp struct {
	size  int64
	mtime time.Time
}

type fileStamps [3]fileStamp // cert, key, client CA

func (r *tlsReloader) stat() (fileStamps, error) {
	var st fileStamps
	for i, f := range []struct{ flag, path string }{{"tls-cert", r.certFile}, {"tls-key", r.keyFile}, {"client-ca", r.caFile}} {
		if f.path == "" {
			continue
		}
		fi, err := os.Stat(f.path)
		if err != nil {
			return st, &redirect.FieldError{Field: f.flag, Value: f.path, Reason: "cannot be read: " + err.Error()}
		}
		st[i] = fileStamp{fi.Size(), fi.ModTime()}
	}
	return st, nil
}

// load reads the files into a per-connection configuration.
func (r *tlsReloader) load() (*tls.Config, error) {
	cert, err := tls.LoadX509KeyPair(r.certFile, r.keyFile)
	if err != nil {
		return nil, &redirect.FieldError{Field: "tls-cert", Value: r.certFile, Reason: "is not a usable certificate and key: " + err.Error()}
	}
	cfg := &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
	if r.caFile != "" {
		pem, err := os.ReadFile(r.caFile)
		if err != nil {
			return nil, &redirect.FieldError{Field: "client-ca", Value: r.caFile, Reason: "cannot be read: " + err.Error()}
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, &redirect.FieldError{Field: "client-ca", Value: r.caFile, Reason: "holds no PEM certificate"}
		}
		cfg.ClientCAs = pool
		cfg.ClientAuth = tls.RequireAndVerifyClientCert
	}
	return cfg, nil
}

// configForClient is tls.Config.GetConfigForClient: the current configuration,
// reloaded first when the files changed.
func (r *tlsReloader) configForClient(*tls.ClientHelloInfo) (*tls.Config, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	st, err := r.stat()
	switch {
	case err != nil:
		if st != r.failed {
			r.log.Error("tls files unreadable; previous certificate kept", "error", err)
		}
		r.failed = st
	case st != r.loaded && st != r.failed:
		cfg, err := r.load()
		if err != nil {
			r.failed = st
			r.log.Error("tls files changed but do not load; previous certificate kept", "error", err)
			break
		}
		r.current, r.loaded, r.failed = cfg, st, fileStamps{}
		r.log.Info("tls files reloaded", "cert", r.certFile, "client_ca", r.caFile, "not_after", notAfter(cfg))
	}
	return r.current, nil
}

func notAfter(cfg *tls.Config) string {
	if len(cfg.Certificates) == 0 || len(cfg.Certificates[0].Certificate) == 0 {
		return ""
	}
	c, err := x509.ParseCertificate(cfg.Certificates[0].Certificate[0])
	if err != nil {
		return ""
	}
	return c.NotAfter.UTC().Format(time.RFC3339)
}

// pairedFiles refuses one of two files that go together without the other,
// naming the one missing and the one given.
func pairedFiles(certField, cert, keyField, key string) error {
	switch {
	case cert != "" && key == "":
		return &redirect.FieldError{Field: keyField, Value: key, Reason: "is required with " + certField + " " + strconv.Quote(cert)}
	case cert == "" && key != "":
		return &redirect.FieldError{Field: certField, Value: cert, Reason: "is required with " + keyField + " " + strconv.Quote(key)}
	}
	return nil
}
