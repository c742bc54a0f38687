package install

import (
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"net/url"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"sigs.k8s.io/yaml"
)

// Credentials are what the plugin's kubeconfig is made of: the API server's
// address, the CA that signs its certificate and the service account token.
type Credentials struct {
	Server string // https://host:port
	CA     []byte // PEM
	Token  string
	// TokenFile, instead of Token, makes the kubeconfig name a token file that
	// its reader reads on every request.
	TokenFile string
}

// kubeconfig mirrors the parts of clientcmd's v1 Config the plugin needs; the
// field order gives a stable rendering.
type kubeconfig struct {
	APIVersion     string         `json:"apiVersion"`
	Kind           string         `json:"kind"`
	Clusters       []namedCluster `json:"clusters"`
	Users          []namedUser    `json:"users"`
	Contexts       []namedContext `json:"contexts"`
	CurrentContext string         `json:"current-context"`
}

type namedCluster struct {
	Name    string `json:"name"`
	Cluster struct {
		Server                   string `json:"server"`
		CertificateAuthorityData string `json:"certificate-authority-data"`
	} `json:"cluster"`
}

type namedUser struct {
	Name string `json:"name"`
	User struct {
		Token     string `json:"token,omitempty"`
		TokenFile string `json:"tokenFile,omitempty"`
	} `json:"user"`
}

type namedContext struct {
	Name    string `json:"name"`
	Context struct {
		Cluster string `json:"cluster"`
		User    string `json:"user"`
	} `json:"context"`
}

// Kubeconfig renders the kubeconfig for c. The CA and the token (unless a token
// file is named) are inlined, so the file is a secret (write it with mode 0600). The same credentials always give
// the same bytes.
func Kubeconfig(c Credentials) ([]byte, error) {
	if err := checkServer(c.Server); err != nil {
		return nil, err
	}
	if block, _ := pem.Decode(c.CA); block == nil || block.Type != "CERTIFICATE" {
		return nil, errors.New("CA: is not a PEM certificate")
	}
	token := strings.TrimSpace(c.Token)
	switch {
	case c.TokenFile != "" && token != "":
		return nil, errors.New("token and token file: give one")
	case c.TokenFile != "" && !filepath.IsAbs(c.TokenFile):
		return nil, fmt.Errorf("token file: %q is not an absolute path", c.TokenFile)
	case c.TokenFile == "" && token == "":
		return nil, errors.New("token: is empty")
	}
	const name = "detour-cni"
	kc := kubeconfig{APIVersion: "v1", Kind: "Config", CurrentContext: name}
	var cl namedCluster
	cl.Name = name
	cl.Cluster.Server = c.Server
	cl.Cluster.CertificateAuthorityData = base64.StdEncoding.EncodeToString(c.CA)
	var u namedUser
	u.Name = name
	u.User.Token = token
	u.User.TokenFile = c.TokenFile
	var ctx namedContext
	ctx.Name = name
	ctx.Context.Cluster = name
	ctx.Context.User = name
	kc.Clusters = []namedCluster{cl}
	kc.Users = []namedUser{u}
	kc.Contexts = []namedContext{ctx}
	out, err := yaml.Marshal(kc)
	if err != nil {
		return nil, fmt.Errorf("render kubeconfig: %w", err)
	}
	return append([]byte("# Written by detour cni install for the detour-cni plugin; rewritten when the token rotates.\n"), out...), nil
}

// ServerURL returns the API server URL for a host and port as the
// KUBERNETES_SERVICE_HOST and KUBERNETES_SERVICE_PORT variables give them
// (an IPv6 host is bracketed).
func ServerURL(host, port string) string {
	if strings.Contains(host, ":") && !strings.HasPrefix(host, "[") {
		host = "[" + host + "]"
	}
	return "https://" + host + ":" + port
}

func checkServer(s string) error {
	u, err := url.Parse(s)
	if err != nil || u.Scheme != "https" || u.Hostname() == "" || u.Port() == "" || (u.Path != "" && u.Path != "/") ||
		u.User != nil || u.RawQuery != "" || u.Fragment != "" {
		return fmt.Errorf("server: %q is not https://host:port", s)
	}
	// The plugin's kubeconfig must name a port it can dial: url.Parse takes
	// any digits (https://host:99999, https://host:0).
	if port, err := strconv.ParseUint(u.Port(), 10, 16); err != nil || port == 0 {
		return fmt.Errorf("server: %q is not https://host:port (a port 1-65535)", s)
	}
	return nil
}

// TokenExpiry returns the expiry ("exp" claim) of a JWT service account token,
// read without verifying the signature. Legacy tokens without exp return false.
func TokenExpiry(token string) (time.Time, bool) {
	parts := strings.Split(strings.TrimSpace(token), ".")
	if len(parts) != 3 {
		return time.Time{}, false
	}
	payload, err := base64.RawURLEncoding.DecodeString(strings.TrimRight(parts[1], "="))
	if err != nil {
		return time.Time{}, false
	}
	var claims struct {
		Exp *json.Number `json:"exp"`
	}
	if err := json.Unmarshal(payload, &claims); err != nil || claims.Exp == nil {
		return time.Time{}, false
	}
	sec, err := claims.Exp.Int64()
	if err != nil {
		f, ferr := claims.Exp.Float64()
		if ferr != nil {
			return time.Time{}, false
		}
		sec = int64(f)
	}
	return time.Unix(sec, 0), true
}
