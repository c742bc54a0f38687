package kubeapi

import (
	"encoding/base64"
	"errors"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"strings"

	"sigs.k8s.io/yaml"
)

// ErrKubeconfig marks a kubeconfig that cannot be read or used.
var ErrKubeconfig = errors.New("invalid kubeconfig")

// Config is how to reach and authenticate to one API server.
type Config struct {
	// Server is the API server's URL: https://host:port.
	Server string
	// CA is the PEM bundle that verifies the server; empty = the system roots.
	CA []byte
	// Insecure skips verifying the server's certificate (a kubeconfig's
	// insecure-skip-tls-verify).
	Insecure bool
	// Token is a bearer token. TokenFile, when set, wins and is read again
	// before every request.
	Token     string
	TokenFile string
	// CertPEM and KeyPEM are a client certificate and its key.
	CertPEM, KeyPEM []byte
}

// kubeconfig is the part of a kubeconfig file (clientcmd's v1 Config) that
// Load reads.
type kubeconfig struct {
	CurrentContext string `json:"current-context"`
	Clusters       []struct {
		Name    string `json:"name"`
		Cluster struct {
			Server                   string `json:"server"`
			CertificateAuthority     string `json:"certificate-authority"`
			CertificateAuthorityData string `json:"certificate-authority-data"`
			InsecureSkipTLSVerify    bool   `json:"insecure-skip-tls-verify"`
		} `json:"cluster"`
	} `json:"clusters"`
	Users []struct {
		Name string `json:"name"`
		User struct {
			Token                 string `json:"token"`
			TokenFile             string `json:"tokenFile"`
			ClientCertificate     string `json:"client-certificate"`
			ClientCertificateData string `json:"client-certificate-data"`
			ClientKey             string `json:"client-key"`
			ClientKeyData         string `json:"client-key-data"`
		} `json:"user"`
	} `json:"users"`
	Contexts []struct {
		Name    string `json:"name"`
		Context struct {
			Cluster string `json:"cluster"`
			User    string `json:"user"`
		} `json:"context"`
	} `json:"contexts"`
}

// Load reads the kubeconfig at path and returns its current context's
// cluster and user (the only context when current-context is unset). Relative
// file paths in it are relative to the kubeconfig's directory, as kubectl
// reads them. Errors match ErrKubeconfig and name the path and field.
func Load(path string) (Config, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return Config{}, fmt.Errorf("%w: read %s: %w", ErrKubeconfig, path, err)
	}
	var kc kubeconfig
	if err := yaml.Unmarshal(b, &kc); err != nil {
		return Config{}, fmt.Errorf("%w: %s: %w", ErrKubeconfig, path, err)
	}
	bad := func(format string, args ...any) error {
		return fmt.Errorf("%w: %s: %s", ErrKubeconfig, path, fmt.Sprintf(format, args...))
	}
	ctxName := kc.CurrentContext
	if ctxName == "" {
		if len(kc.Contexts) != 1 {
			return Config{}, bad("current-context is empty and there are %d contexts", len(kc.Contexts))
		}
		ctxName = kc.Contexts[0].Name
	}
	var clusterName, userName string
	found := false
	for _, c := range kc.Contexts {
		if c.Name == ctxName {
			clusterName, userName, found = c.Context.Cluster, c.Context.User, true
			break
		}
	}
	if !found {
		return Config{}, bad("current-context %q: no such context", ctxName)
	}
	dir := filepath.Dir(path)
	resolve := func(p string) string {
		if p == "" || filepath.IsAbs(p) {
			return p
		}
		return filepath.Join(dir, p)
	}
	var cfg Config
	found = false
	for _, c := range kc.Clusters {
		if c.Name != clusterName {
			continue
		}
		found = true
		cfg.Server = c.Cluster.Server
		cfg.Insecure = c.Cluster.InsecureSkipTLSVerify
		switch {
		case c.Cluster.CertificateAuthorityData != "":
			if cfg.CA, err = base64.StdEncoding.DecodeString(c.Cluster.CertificateAuthorityData); err != nil {
				return Config{}, bad("cluster %q: certificate-authority-data is not base64", clusterName)
			}
		case c.Cluster.CertificateAuthority != "":
			if cfg.CA, err = os.ReadFile(resolve(c.Cluster.CertificateAuthority)); err != nil {
				return Config{}, bad("cluster %q: certificate-authority: %v", clusterName, err)
			}
		}
	}
	if !found {
		return Config{}, bad("context %q: no cluster %q", ctxName, clusterName)
	}
	if u, err := url.Parse(cfg.Server); err != nil || u.Host == "" || (u.Scheme != "https" && u.Scheme != "http") {
		return Config{}, bad("cluster %q: server %q is not an https:// (or http://) URL", clusterName, cfg.Server)
	}
	for _, u := range kc.Users {
		if u.Name != userName {
			continue
		}
		cfg.Token = strings.TrimSpace(u.User.Token)
		cfg.TokenFile = resolve(u.User.TokenFile)
		if cfg.CertPEM, err = dataOrFile(u.User.ClientCertificateData, resolve(u.User.ClientCertificate)); err != nil {
			return Config{}, bad("user %q: client certificate: %v", userName, err)
		}
		if cfg.KeyPEM, err = dataOrFile(u.User.ClientKeyData, resolve(u.User.ClientKey)); err != nil {
			return Config{}, bad("user %q: client key: %v", userName, err)
		}
	}
	return cfg, nil
}

func dataOrFile(data, file string) ([]byte, error) {
	if data != "" {
		b, err := base64.StdEncoding.DecodeString(data)
		if err != nil {
			return nil, errors.New("data is not base64")
		}
		return b, nil
	}
	if file != "" {
		return os.ReadFile(file)
	}
	return nil, nil
}
