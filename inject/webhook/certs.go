package webhook

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"os"
	"sync"
	"time"
)

// Certificates gives the webhook server its serving certificate.
type Certificates interface {
	GetCertificate(*tls.ClientHelloInfo) (*tls.Certificate, error)
}

// SelfSigned is a serving certificate issued by a CA that lives only in this
// process's memory (its key is never written anywhere). Each rotation makes a
// new CA and certificate: the new CA goes into the caBundle first (Next), and
// the certificate is served only after the API server had time to load it
// (Activate); the old CA stays in the bundle until it expires, so requests in
// flight with either certificate verify. Replicas each have their own CA; the
// bundle holds all of them (see Bundle and mergeBundle).
type SelfSigned struct {
	names    []string
	ips      []net.IP
	validity time.Duration

	mu      sync.Mutex
	current *tls.Certificate
	pending *tls.Certificate
	cas     []*x509.Certificate // this process's CAs, newest last
}

// NewSelfSigned issues the first CA and serving certificate for the DNS
// names and IP addresses given; each lives validity (at least two rotation
// periods, so the previous CA outlives the switch).
func NewSelfSigned(dnsNames []string, ips []net.IP, validity time.Duration) (*SelfSigned, error) {
	if len(dnsNames) == 0 && len(ips) == 0 {
		return nil, errors.New("self-signed webhook certificate: no DNS name or IP address to issue it for")
	}
	if validity <= 0 {
		return nil, fmt.Errorf("self-signed webhook certificate: validity %s is not positive", validity)
	}
	s := &SelfSigned{names: dnsNames, ips: ips, validity: validity}
	if err := s.Next(); err != nil {
		return nil, err
	}
	s.Activate()
	return s, nil
}

// Next issues a new CA and certificate; the CA is in Bundle from now on, the
// certificate is served after Activate.
func (s *SelfSigned) Next() error {
	ca, cert, err := issue(s.names, s.ips, s.validity)
	if err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.pending = cert
	s.cas = append(s.cas, ca)
	return nil
}

// Activate serves the certificate of the last Next.
func (s *SelfSigned) Activate() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.pending != nil {
		s.current, s.pending = s.pending, nil
	}
}

// GetCertificate returns the serving certificate (tls.Config.GetCertificate).
func (s *SelfSigned) GetCertificate(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.current, nil
}

// Bundle returns this process's unexpired CAs as PEM, oldest first.
func (s *SelfSigned) Bundle(now time.Time) []byte {
	s.mu.Lock()
	defer s.mu.Unlock()
	var b bytes.Buffer
	kept := s.cas[:0]
	for _, ca := range s.cas {
		if now.After(ca.NotAfter) {
			continue
		}
		kept = append(kept, ca)
		_ = pem.Encode(&b, &pem.Block{Type: "CERTIFICATE", Bytes: ca.Raw})
	}
	s.cas = kept
	return b.Bytes()
}

func issue(names []string, ips []net.IP, validity time.Duration) (*x509.Certificate, *tls.Certificate, error) {
	now := time.Now().Add(-time.Minute) // tolerate a little clock skew
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, fmt.Errorf("generate webhook ca key: %w", err)
	}
	caTmpl := &x509.Certificate{
		SerialNumber:          serial(),
		Subject:               pkix.Name{CommonName: "detour webhook ca " + now.UTC().Format(time.RFC3339)},
		NotBefore:             now,
		NotAfter:              now.Add(validity),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLenZero:        true,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		return nil, nil, fmt.Errorf("issue webhook ca: %w", err)
	}
	ca, err := x509.ParseCertificate(caDER)
	if err != nil {
		return nil, nil, fmt.Errorf("parse webhook ca: %w", err)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, fmt.Errorf("generate webhook key: %w", err)
	}
	cn := "detour webhook"
	if len(names) > 0 {
		cn = names[0]
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial(),
		Subject:      pkix.Name{CommonName: cn},
		DNSNames:     names,
		IPAddresses:  ips,
		NotBefore:    now,
		NotAfter:     now.Add(validity),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
	if err != nil {
		return nil, nil, fmt.Errorf("issue webhook certificate: %w", err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, nil, fmt.Errorf("parse webhook certificate: %w", err)
	}
	return ca, &tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: leaf}, nil
}

func serial() *big.Int {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		panic("read random serial: " + err.Error())
	}
	return n
}

// Files serves a certificate and key read from files (for example a
// kubernetes.io/tls Secret that cert-manager fills and the kubelet mounts),
// re-read when their modification time changes, checked at most once a
// second.
type Files struct {
	CertFile, KeyFile string

	mu      sync.Mutex
	checked time.Time
	stamp   [2]time.Time
	cert    *tls.Certificate
}

// Load reads the files; it is called once at start so a bad pair fails the
// start, and afterwards by GetCertificate when they change.
func (f *Files) Load() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.load()
}

func (f *Files) load() error {
	var stamp [2]time.Time
	for i, p := range []string{f.CertFile, f.KeyFile} {
		fi, err := os.Stat(p)
		if err != nil {
			return fmt.Errorf("read webhook certificate: %w", err)
		}
		stamp[i] = fi.ModTime()
	}
	if f.cert != nil && stamp == f.stamp {
		return nil
	}
	c, err := tls.LoadX509KeyPair(f.CertFile, f.KeyFile)
	if err != nil {
		return fmt.Errorf("load webhook certificate %s and key %s: %w", f.CertFile, f.KeyFile, err)
	}
	f.cert, f.stamp = &c, stamp
	return nil
}

// GetCertificate returns the current certificate; when the files changed and
// no longer load (a half-written update), the previous one stays in use.
func (f *Files) GetCertificate(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if time.Since(f.checked) > time.Second {
		f.checked = time.Now()
		if err := f.load(); err != nil && f.cert == nil {
			return nil, err
		}
	}
	return f.cert, nil
}

// mergeBundle returns the PEM certificates of current (the configuration's
// caBundle, which other replicas also write) that are unexpired at now,
// followed by those of own not already there.
func mergeBundle(current, own []byte, now time.Time) []byte {
	var out bytes.Buffer
	seen := map[string]bool{}
	for _, src := range [][]byte{current, own} {
		rest := src
		for {
			var blk *pem.Block
			blk, rest = pem.Decode(rest)
			if blk == nil {
				break
			}
			if blk.Type != "CERTIFICATE" || seen[string(blk.Bytes)] {
				continue
			}
			c, err := x509.ParseCertificate(blk.Bytes)
			if err != nil || now.After(c.NotAfter) {
				continue
			}
			seen[string(blk.Bytes)] = true
			_ = pem.Encode(&out, blk)
		}
	}
	return out.Bytes()
}
