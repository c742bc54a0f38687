package webhook

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/x509"
	"encoding/pem"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"
)

func pemOf(c *x509.Certificate) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})
}

func TestMergeBundle(t *testing.T) {
	t.Parallel()
	a, _, err := issue([]string{"a"}, nil, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	b, _, err := issue([]string{"b"}, nil, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	current := append(pemOf(a), pemOf(a)...) // both webhooks' copies
	got := mergeBundle(current, pemOf(b), time.Now())
	if want := append(pemOf(a), pemOf(b)...); !bytes.Equal(got, want) {
		t.Errorf("merge kept duplicates or lost a CA:\n%s", got)
	}
	// Two hours on, both have expired: another replica's stale CA is dropped.
	if got := mergeBundle(current, pemOf(b), time.Now().Add(2*time.Hour)); len(got) != 0 {
		t.Errorf("expired CAs kept:\n%s", got)
	}
}

func TestSelfSignedRotation(t *testing.T) {
	t.Parallel()
	s, err := NewSelfSigned(nil, []net.IP{net.IPv4(127, 0, 0, 1)}, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	first, _ := s.GetCertificate(nil)
	if err := s.Next(); err != nil {
		t.Fatal(err)
	}
	if c, _ := s.GetCertificate(nil); c != first {
		t.Error("Next switched the served certificate before Activate")
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(s.Bundle(time.Now()))
	s.Activate()
	second, _ := s.GetCertificate(nil)
	if second == first {
		t.Fatal("Activate did not switch the certificate")
	}
	for _, c := range []*x509.Certificate{first.Leaf, second.Leaf} {
		if _, err := c.Verify(x509.VerifyOptions{Roots: pool, DNSName: "127.0.0.1"}); err != nil {
			t.Errorf("the bundle does not verify certificate %s: %v", c.SerialNumber, err)
		}
	}
}

func TestFilesReload(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	f := &Files{CertFile: filepath.Join(dir, "tls.crt"), KeyFile: filepath.Join(dir, "tls.key")}
	write := func(mtime time.Time) *x509.Certificate {
		_, c, err := issue([]string{"x"}, nil, time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		key, err := x509.MarshalECPrivateKey(c.PrivateKey.(*ecdsa.PrivateKey))
		if err != nil {
			t.Fatal(err)
		}
		for p, b := range map[string][]byte{
			f.CertFile: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Certificate[0]}),
			f.KeyFile:  pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: key}),
		} {
			if err := os.WriteFile(p, b, 0o600); err != nil {
				t.Fatal(err)
			}
			if err := os.Chtimes(p, mtime, mtime); err != nil {
				t.Fatal(err)
			}
		}
		return c.Leaf
	}
	first := write(time.Now().Add(-time.Minute))
	if err := f.Load(); err != nil {
		t.Fatal(err)
	}
	served := func() *x509.Certificate {
		c, err := f.GetCertificate(nil)
		if err != nil {
			t.Fatal(err)
		}
		leaf, err := x509.ParseCertificate(c.Certificate[0])
		if err != nil {
			t.Fatal(err)
		}
		return leaf
	}
	if !served().Equal(first) {
		t.Fatal("not serving the files' certificate")
	}
	second := write(time.Now())
	f.mu.Lock()
	f.checked = time.Time{} // as if the once-a-second check were due
	f.mu.Unlock()
	if !served().Equal(second) {
		t.Error("a changed certificate file was not picked up")
	}
	// A half-written update keeps the last good certificate in use.
	if err := os.WriteFile(f.KeyFile, []byte("garbage"), 0o600); err != nil {
		t.Fatal(err)
	}
	f.mu.Lock()
	f.checked = time.Time{}
	f.mu.Unlock()
	if !served().Equal(second) {
		t.Error("a broken update replaced the served certificate")
	}
}
