package install

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/detour-mesh/detour/internal/atomicfile"
	"github.com/detour-mesh/detour/internal/kubeapi"
)

// tokenRequest is the part of an authentication.k8s.io/v1 TokenRequest the
// installer sends and reads back.
type tokenRequest struct {
	APIVersion string `json:"apiVersion"`
	Kind       string `json:"kind"`
	Spec       struct {
		ExpirationSeconds int64           `json:"expirationSeconds"`
		BoundObjectRef    *boundObjectRef `json:"boundObjectRef,omitempty"`
	} `json:"spec"`
	Status struct {
		Token string `json:"token"`
	} `json:"status"`
}

type boundObjectRef struct {
	Kind       string `json:"kind"`
	APIVersion string `json:"apiVersion"`
	Name       string `json:"name"`
}

// ensurePluginToken keeps PluginTokenFile holding a token of the plugin's
// service account that is past less than half its life. It asks the API
// server for a new one (with the installer's own token) only when the file is
// missing, belongs to another account or is due; the file is replaced
// atomically, so a reader sees the old token or the new one, both valid.
func (in *Installer) ensurePluginToken(ctx context.Context) (string, error) {
	if in.o.PluginServiceAccount == "" {
		return "", nil
	}
	ns, name, _ := strings.Cut(in.o.PluginServiceAccount, "/")
	subject := "system:serviceaccount:" + ns + ":" + name
	if have, err := os.ReadFile(in.o.PluginTokenFile); err == nil {
		if c, ok := tokenClaims(string(have)); ok && c.Sub == subject && c.Node == in.o.NodeName && time.Now().Before(c.renewAt()) {
			return "", nil
		}
	}
	ca, err := os.ReadFile(in.o.CAFile)
	if err != nil {
		return "", fmt.Errorf("read service account CA: %w", err)
	}
	client, err := kubeapi.New(kubeapi.Config{Server: in.o.Server, CA: ca, TokenFile: in.o.TokenFile}, kubeapi.Options{UserAgent: "detour-cni-install"})
	if err != nil {
		return "", fmt.Errorf("request plugin token: %w", err)
	}
	req := tokenRequest{APIVersion: "authentication.k8s.io/v1", Kind: "TokenRequest"}
	req.Spec.ExpirationSeconds = int64(in.o.PluginTokenLifetime / time.Second)
	if in.o.NodeName != "" {
		req.Spec.BoundObjectRef = &boundObjectRef{Kind: "Node", APIVersion: "v1", Name: in.o.NodeName}
	}
	var resp tokenRequest
	path := "/api/v1/namespaces/" + ns + "/serviceaccounts/" + name + "/token"
	if err := client.Post(ctx, path, req, &resp); err != nil {
		return "", fmt.Errorf("request a token for service account %s: %w", in.o.PluginServiceAccount, err)
	}
	if resp.Status.Token == "" {
		return "", fmt.Errorf("request a token for service account %s: the answer holds no token", in.o.PluginServiceAccount)
	}
	if err := atomicfile.WriteFrom(in.o.PluginTokenFile, bytes.NewReader([]byte(resp.Status.Token)), 0o600); err != nil {
		return "", fmt.Errorf("write plugin token: %w", err)
	}
	in.o.Logger.Info("wrote plugin token", "path", in.o.PluginTokenFile, "service_account", in.o.PluginServiceAccount, "node", in.o.NodeName)
	return "wrote " + in.o.PluginTokenFile, nil
}

// claims are the parts of a service account token the installer reads,
// without verifying it (the API server does).
type claims struct {
	Sub      string `json:"sub"`
	Iat, Exp int64
	Node     string
}

// renewAt is half-way through the token's life.
func (c claims) renewAt() time.Time {
	return time.Unix(c.Iat+(c.Exp-c.Iat)/2, 0)
}

func tokenClaims(token string) (claims, bool) {
	parts := strings.Split(strings.TrimSpace(token), ".")
	if len(parts) != 3 {
		return claims{}, false
	}
	payload, err := base64.RawURLEncoding.DecodeString(strings.TrimRight(parts[1], "="))
	if err != nil {
		return claims{}, false
	}
	var raw struct {
		Sub  string      `json:"sub"`
		Iat  json.Number `json:"iat"`
		Exp  json.Number `json:"exp"`
		Kube struct {
			Node struct {
				Name string `json:"name"`
			} `json:"node"`
		} `json:"kubernetes.io"`
	}
	if err := json.Unmarshal(payload, &raw); err != nil {
		return claims{}, false
	}
	iat, err1 := raw.Iat.Int64()
	exp, err2 := raw.Exp.Int64()
	if err1 != nil || err2 != nil || exp <= iat {
		return claims{}, false
	}
	return claims{Sub: raw.Sub, Iat: iat, Exp: exp, Node: raw.Kube.Node.Name}, true
}

// daemonSetGone reports whether the installer's DaemonSet is deleted or being
// deleted, reading it with the installer's own token. A refusal (401, 403)
// counts as deleted too: `kubectl delete -k` deletes the service accounts and
// the RBAC before the DaemonSet's pods get SIGTERM, and an installation left
// then holds a token of a deleted service account, so that every new pod of
// the node would fail its CNI ADD. Any other answer, or none, counts as
// "still there": the installation stays for the next pod.
func (in *Installer) daemonSetGone(ctx context.Context) bool {
	ns, name, _ := strings.Cut(in.o.DaemonSet, "/")
	log := in.o.Logger.With("daemonset", in.o.DaemonSet)
	ca, err := os.ReadFile(in.o.CAFile)
	if err != nil {
		log.Error("cannot tell whether the DaemonSet is deleted; leaving the installation in place", "error", err)
		return false
	}
	client, err := kubeapi.New(kubeapi.Config{Server: in.o.Server, CA: ca, TokenFile: in.o.TokenFile}, kubeapi.Options{UserAgent: "detour-cni-install", Timeout: 10 * time.Second})
	if err != nil {
		log.Error("cannot tell whether the DaemonSet is deleted; leaving the installation in place", "error", err)
		return false
	}
	var ds struct {
		Metadata struct {
			DeletionTimestamp *string `json:"deletionTimestamp"`
		} `json:"metadata"`
	}
	err = client.Get(ctx, "/apis/apps/v1/namespaces/"+ns+"/daemonsets/"+name, &ds)
	switch {
	case kubeapi.Code(err) == 404:
		log.Info("the DaemonSet is deleted; uninstalling")
		return true
	case kubeapi.Code(err) == 401 || kubeapi.Code(err) == 403:
		log.Info("the installer's identity is refused: detour's service accounts or RBAC are deleted; uninstalling", "error", err)
		return true
	case err != nil:
		log.Error("cannot tell whether the DaemonSet is deleted; leaving the installation in place", "error", err)
		return false
	case ds.Metadata.DeletionTimestamp != nil:
		log.Info("the DaemonSet is being deleted; uninstalling")
		return true
	}
	log.Info("the DaemonSet remains: leaving the installation to the next pod")
	return false
}
