package testpki

import (
	"crypto/x509"
	"testing"
)

// TestIssueVerifies: a leaf verifies against the CA's pool for 127.0.0.1,
// its DNS SANs and its usage, and not for another usage or name, nor
// against another CA.
func TestIssueVerifies(t *testing.T) {
	ca := New(t, "test CA")
	leaf, err := x509.ParseCertificate(ca.Issue(t, "server", []string{"detour-control-plane"}, x509.ExtKeyUsageServerAuth).Certificate[0])
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"127.0.0.1", "detour-control-plane"} {
		if _, err := leaf.Verify(x509.VerifyOptions{Roots: ca.Pool, DNSName: name, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}); err != nil {
			t.Errorf("a server certificate for %s: %v", name, err)
		}
	}
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: ca.Pool, DNSName: "other", KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}); err == nil {
		t.Error("the certificate verifies for a name it does not hold")
	}
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: ca.Pool, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err == nil {
		t.Error("a server certificate verifies as a client's")
	}
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: New(t, "other CA").Pool, DNSName: "127.0.0.1"}); err == nil {
		t.Error("the certificate verifies against another CA")
	}
	if got := ca.Cert.Subject.CommonName; got != "test CA" || !ca.Cert.IsCA {
		t.Errorf("the CA: %q, IsCA %v", got, ca.Cert.IsCA)
	}
}
