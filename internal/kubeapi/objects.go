package kubeapi

import "net/url"

// ObjectMeta is the part of an object's metadata detour reads.
type ObjectMeta struct {
	Name        string            `json:"name"`
	Namespace   string            `json:"namespace,omitempty"`
	UID         string            `json:"uid,omitempty"`
	Labels      map[string]string `json:"labels,omitempty"`
	Annotations map[string]string `json:"annotations,omitempty"`
}

// Pod is the part of a pod detour reads.
type Pod struct {
	Metadata ObjectMeta `json:"metadata"`
	Spec     struct {
		HostNetwork bool `json:"hostNetwork,omitempty"`
	} `json:"spec"`
}

// Namespace is the part of a namespace detour reads.
type Namespace struct {
	Metadata ObjectMeta `json:"metadata"`
}

// PodPath is the API path of a pod.
func PodPath(namespace, name string) string {
	return "/api/v1/namespaces/" + url.PathEscape(namespace) + "/pods/" + url.PathEscape(name)
}

// NamespacePath is the API path of a namespace.
func NamespacePath(name string) string {
	return "/api/v1/namespaces/" + url.PathEscape(name)
}
