package controlplane

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"math/big"
	"os"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	sotwclient "github.com/envoyproxy/go-control-plane/pkg/client/sotw/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"

	"github.com/detour-mesh/detour/controlplane/xds"
)

// TestTLSRotationWithoutRestart: the server certificate, its key and the
// client CA bundle are replaced on disk while the server runs. New connections
// get the new certificate and are verified against the new CA; the node
// identity check stays on; a rotation that does not load keeps the previous
// certificate.
func TestTLSRotationWithoutRestart(t *testing.T) {
	t.Parallel()
	old := newTestPKI(t)
	certFile, keyFile, caFile := old.serverCert, old.serverKey, old.caFile
	serverTLS, err := TLSConfig(certFile, keyFile, caFile, nil)
	if err != nil {
		t.Fatal(err)
	}
	s := startServer(t, xds.Options{TLS: serverTLS})
	s.update(t, loadMesh(t, "testdata/matrix.yaml"))
	ctx := testCtx(t)

	fetch := func(creds credentials.TransportCredentials, node string) error {
		c := sotwclient.NewADSClient(ctx, &corev3.Node{Id: node}, resourcev3.ListenerType)
		if err := c.InitConnect(dial(t, s.addr, creds)); err != nil {
			return err
		}
		_, err := c.Fetch()
		return err
	}
	// serverSerial is the serial of the certificate a new connection gets.
	serverSerial := func(pool *x509.CertPool, clientCert tls.Certificate) *big.Int {
		t.Helper()
		conn, err := tls.Dial("tcp", s.addr, &tls.Config{RootCAs: pool, ServerName: "detour-control-plane",
			Certificates: []tls.Certificate{clientCert}, NextProtos: []string{"h2"}})
		if err != nil {
			t.Fatalf("tls dial: %v", err)
		}
		defer conn.Close()
		return conn.ConnectionState().PeerCertificates[0].SerialNumber
	}

	oldClient := old.clientCreds(t, "redirect-ipv4")
	if err := fetch(oldClient, "redirect-ipv4"); err != nil {
		t.Fatalf("before rotation: %v", err)
	}
	if got, want := serverSerial(old.pool, clientPair(t, old, "probe", "redirect-ipv4")), serial(t, certFile); got.Cmp(want) != 0 {
		t.Fatalf("before rotation the server presents serial %v, want %v", got, want)
	}

	// Rotate to a new CA: new server certificate and key, new client CA.
	rotated := newTestPKI(t)
	replace(t, certFile, rotated.serverCert)
	replace(t, keyFile, rotated.serverKey)
	replace(t, caFile, rotated.caFile)

	newProbe := clientPair(t, rotated, "probe", "redirect-ipv4")
	if got, want := serverSerial(rotated.pool, newProbe), serial(t, rotated.serverCert); got.Cmp(want) != 0 {
		t.Errorf("after rotation the server presents serial %v, want the new certificate's %v", got, want)
	}
	if err := fetch(rotated.clientCreds(t, "redirect-ipv4"), "redirect-ipv4"); err != nil {
		t.Errorf("after rotation a client of the new CA: %v", err)
	}
	// A client certificate of the old CA is no longer accepted.
	oldCertNewRoots := credentials.NewTLS(&tls.Config{RootCAs: rotated.pool, ServerName: "detour-control-plane",
		Certificates: []tls.Certificate{clientPair(t, old, "old-client", "redirect-ipv4")}})
	if err := fetch(oldCertNewRoots, "redirect-ipv4"); err == nil {
		t.Error("after rotation a client certificate of the old CA was accepted")
	}
	// The node identity check still holds with the new CA.
	if err := fetch(rotated.clientCreds(t, "redirect-ipv4"), "redirect-dual"); status.Code(err) != codes.PermissionDenied {
		t.Errorf("after rotation a certificate for redirect-ipv4 asking for redirect-dual: %v, want PermissionDenied", err)
	}

	// A rotation that does not load (a truncated certificate) keeps the
	// current certificate.
	b, err := os.ReadFile(certFile)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(certFile, b[:len(b)/2], 0o600); err != nil {
		t.Fatal(err)
	}
	touch(t, certFile, 2*time.Hour)
	if got, want := serverSerial(rotated.pool, newProbe), serial(t, rotated.serverCert); got.Cmp(want) != 0 {
		t.Errorf("after a broken rotation the server presents serial %v, want the previous %v", got, want)
	}
}

// replace writes src's content over dst and moves dst's modification time
// forward, as a rotation does (file systems with coarse timestamps could
// otherwise give the rewrite the same time).
func replace(t *testing.T, dst, src string) {
	t.Helper()
	b, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(dst, b, 0o600); err != nil {
		t.Fatal(err)
	}
	touch(t, dst, time.Hour)
}

func touch(t *testing.T, path string, ahead time.Duration) {
	t.Helper()
	at := time.Now().Add(ahead)
	if err := os.Chtimes(path, at, at); err != nil {
		t.Fatal(err)
	}
}

// clientPair issues a client certificate for node from p.
func clientPair(t *testing.T, p *testPKI, name, node string) tls.Certificate {
	t.Helper()
	certFile, keyFile := p.issue(t, name, []string{node}, x509.ExtKeyUsageClientAuth)
	c, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func serial(t *testing.T, certFile string) *big.Int {
	t.Helper()
	b, err := os.ReadFile(certFile)
	if err != nil {
		t.Fatal(err)
	}
	blk, _ := pem.Decode(b)
	if blk == nil {
		t.Fatalf("%s holds no PEM block", certFile)
	}
	c, err := x509.ParseCertificate(blk.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return c.SerialNumber
}
