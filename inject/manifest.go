package inject

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"strings"

	k8syaml "k8s.io/apimachinery/pkg/util/yaml"
	"sigs.k8s.io/yaml"
)

// templatePath is where a kind keeps its pod template ("" path = the object
// itself, for a Pod).
var templatePaths = map[string][]string{
	"Pod":                   {},
	"Deployment":            {"spec", "template"},
	"StatefulSet":           {"spec", "template"},
	"DaemonSet":             {"spec", "template"},
	"ReplicaSet":            {"spec", "template"},
	"ReplicationController": {"spec", "template"},
	"Job":                   {"spec", "template"},
	"PodTemplate":           {"template"},
	"CronJob":               {"spec", "jobTemplate", "spec", "template"},
}

// Manifests reads YAML or JSON documents from r (multi-document YAML, and
// Lists), injects the pod template of every workload (Pod, Deployment,
// StatefulSet, DaemonSet, ReplicaSet, ReplicationController, Job, CronJob,
// PodTemplate) and writes every document to w as YAML, separated by "---".
// Other kinds pass through unchanged. It decides as the webhook does
// (Wanted), with every namespace taken as opted in: templates opted out
// (detour.io/inject: disabled), on the host network, already injected or of
// a workload in kube-system or detour-system are left as they are, so running
// it twice changes nothing. A workload's namespace is its metadata.namespace,
// else namespace (where `kubectl apply -n` puts it; "" when not known).
// Comments and key order are not kept.
func (in *Injector) Manifests(r io.Reader, w io.Writer, namespace string) error {
	return transform(r, w, namespace, func(t map[string]any, ns string) error {
		tmpl, err := PodTemplate(t)
		if err != nil {
			return err
		}
		want, _, err := Wanted(ns, tmpl.ObjectMeta, tmpl.Spec, true)
		if err != nil || !want {
			return err
		}
		m, err := in.Plan(tmpl.ObjectMeta, tmpl.Spec)
		if err != nil {
			return err
		}
		return m.Apply(t)
	})
}

// UninjectManifests is Manifests' inverse: it removes exactly what injection
// added (Uninject) from every workload in r, whatever its namespace.
func UninjectManifests(r io.Reader, w io.Writer) error {
	return transform(r, w, "", func(t map[string]any, _ string) error {
		_, err := Uninject(t)
		return err
	})
}

// transform calls fn on the pod template of every workload in r, with the
// workload's namespace (its metadata.namespace, else namespace).
func transform(r io.Reader, w io.Writer, namespace string, fn func(template map[string]any, namespace string) error) error {
	rd := k8syaml.NewYAMLReader(bufio.NewReader(r))
	var out bytes.Buffer
	n := 0
	for {
		doc, err := rd.Read()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return fmt.Errorf("read manifests: %w", err)
		}
		var obj map[string]any
		if err := yaml.Unmarshal(doc, &obj); err != nil {
			return fmt.Errorf("document %d: not YAML or JSON: %w", n+1, err)
		}
		if obj == nil {
			continue // only comments or blank
		}
		n++
		if err := visit(obj, namespace, fn); err != nil {
			return fmt.Errorf("document %d (%s): %w", n, describe(obj), err)
		}
		b, err := yaml.Marshal(obj)
		if err != nil {
			return fmt.Errorf("document %d: render: %w", n, err)
		}
		if n > 1 {
			out.WriteString("---\n")
		}
		out.Write(b)
	}
	_, err := w.Write(out.Bytes())
	return err
}

// visit calls fn on obj's pod template, or on every item of a List, with
// the object's namespace (namespace when its metadata names none).
func visit(obj map[string]any, namespace string, fn func(map[string]any, string) error) error {
	kind, _ := obj["kind"].(string)
	if items, ok := obj["items"].([]any); ok && strings.HasSuffix(kind, "List") {
		for i, it := range items {
			m, ok := it.(map[string]any)
			if !ok {
				continue
			}
			if err := visit(m, namespace, fn); err != nil {
				return fmt.Errorf("items[%d] (%s): %w", i, describe(m), err)
			}
		}
		return nil
	}
	path, ok := templatePaths[kind]
	if !ok {
		return nil
	}
	meta, _ := obj["metadata"].(map[string]any)
	if ns, _ := meta["namespace"].(string); ns != "" {
		namespace = ns
	}
	t := obj
	for _, k := range path {
		next, ok := t[k].(map[string]any)
		if !ok {
			return fmt.Errorf("%s has no pod template at %s", kind, strings.Join(path, "."))
		}
		t = next
	}
	return fn(t, namespace)
}

func describe(obj map[string]any) string {
	kind, _ := obj["kind"].(string)
	meta, _ := obj["metadata"].(map[string]any)
	name, _ := meta["name"].(string)
	if ns, _ := meta["namespace"].(string); ns != "" {
		name = ns + "/" + name
	}
	return kind + " " + name
}
