package controlplane

import (
	"crypto/ecdsa"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"os"
	"path/filepath"
	"testing"

	"google.golang.org/grpc/credentials"

	"github.com/detour-mesh/detour/internal/testpki"
)

// testPKI is a throwaway CA with a server certificate for the control plane.
type testPKI struct {
	dir                   string
	ca                    *testpki.CA
	pool                  *x509.CertPool
	caFile                string
	serverCert, serverKey string
}

func newTestPKI(t *testing.T) *testPKI {
	t.Helper()
	ca := testpki.New(t, "detour test CA")
	p := &testPKI{dir: t.TempDir(), ca: ca, pool: ca.Pool}
	p.caFile = filepath.Join(p.dir, "ca.pem")
	writePEM(t, p.caFile, "CERTIFICATE", ca.DER)
	p.serverCert, p.serverKey = p.issue(t, "server", []string{"detour-control-plane"}, x509.ExtKeyUsageServerAuth)
	return p
}

// issue writes a leaf certificate with the given DNS SANs and returns the
// certificate and key file paths.
func (p *testPKI) issue(t *testing.T, name string, sans []string, usage x509.ExtKeyUsage) (string, string) {
	t.Helper()
	leaf := p.ca.Issue(t, name, sans, usage)
	kder, err := x509.MarshalECPrivateKey(leaf.PrivateKey.(*ecdsa.PrivateKey))
	if err != nil {
		t.Fatal(err)
	}
	cert, keyFile := filepath.Join(p.dir, name+".pem"), filepath.Join(p.dir, name+"-key.pem")
	writePEM(t, cert, "CERTIFICATE", leaf.Certificate[0])
	writePEM(t, keyFile, "EC PRIVATE KEY", kder)
	return cert, keyFile
}

// clientCreds are TLS credentials with a client certificate naming node.
func (p *testPKI) clientCreds(t *testing.T, node string) credentials.TransportCredentials {
	t.Helper()
	certFile, keyFile := p.issue(t, "client-"+node, []string{node}, x509.ExtKeyUsageClientAuth)
	cert, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		t.Fatal(err)
	}
	return credentials.NewTLS(&tls.Config{Certificates: []tls.Certificate{cert}, RootCAs: p.pool, ServerName: "detour-control-plane"})
}

func writePEM(t *testing.T, path, typ string, der []byte) {
	t.Helper()
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
}
