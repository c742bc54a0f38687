package inject

import (
	"encoding/json"
	"fmt"
	"slices"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/runtime"
)

// A template is a pod (or a workload's pod template) as a decoded JSON/YAML
// object: {"metadata": {...}, "spec": {...}}. Working on the generic form
// keeps every field the injector does not know (and every field of a newer
// Kubernetes) byte for byte.

// Apply adds m to template.
func (m *Mutation) Apply(template map[string]any) error {
	meta, err := child(template, "metadata")
	if err != nil {
		return err
	}
	spec, err := child(template, "spec")
	if err != nil {
		return err
	}
	ann, err := child(meta, "annotations")
	if err != nil {
		return err
	}
	for k, v := range m.Annotations {
		ann[k] = v
	}
	if err := prepend(spec, "initContainers", m.InitContainers); err != nil {
		return err
	}
	if err := prepend(spec, "containers", m.Containers); err != nil {
		return err
	}
	if len(m.Volumes) > 0 {
		vols, err := list(spec, "volumes")
		if err != nil {
			return err
		}
		for _, v := range m.Volumes {
			u, err := toGeneric(v)
			if err != nil {
				return err
			}
			vols = append(vols, u)
		}
		spec["volumes"] = vols
	}
	return nil
}

// Uninject removes what injection added to template, as its status
// annotation records it, and restores the annotations it changed. A template
// without the annotation is left alone (false). Lists and maps that become
// empty are removed
// (a template's metadata too).
func Uninject(template map[string]any) (bool, error) {
	meta, _ := template["metadata"].(map[string]any)
	ann, _ := meta["annotations"].(map[string]any)
	raw, ok := ann[AnnotationStatus].(string)
	if !ok {
		return false, nil
	}
	var st Status
	if err := json.Unmarshal([]byte(raw), &st); err != nil {
		return false, fmt.Errorf("annotation %s: %q is not an injection status: %w", AnnotationStatus, raw, err)
	}
	spec, err := child(template, "spec")
	if err != nil {
		return false, err
	}
	for _, f := range []struct {
		key   string
		names []string
	}{{"initContainers", st.InitContainers}, {"containers", st.Containers}, {"volumes", st.Volumes}} {
		items, err := list(spec, f.key)
		if err != nil {
			return false, err
		}
		items = slices.DeleteFunc(items, func(it any) bool {
			m, _ := it.(map[string]any)
			name, _ := m["name"].(string)
			return slices.Contains(f.names, name)
		})
		if len(items) == 0 {
			delete(spec, f.key)
		} else {
			spec[f.key] = items
		}
	}
	for k, old := range st.Annotations {
		if old == nil {
			delete(ann, k)
		} else {
			ann[k] = *old
		}
	}
	delete(ann, AnnotationStatus)
	if len(ann) == 0 {
		delete(meta, "annotations")
	}
	if len(meta) == 0 {
		delete(template, "metadata")
	}
	return true, nil
}

// Typed applies m to a typed pod template (for callers that hold one, and
// for tests): the result is what the generic Apply gives, decoded.
func (m *Mutation) Typed(t corev1.PodTemplateSpec) (corev1.PodTemplateSpec, error) {
	u, err := toGeneric(t)
	if err != nil {
		return t, err
	}
	if err := m.Apply(u); err != nil {
		return t, err
	}
	var out corev1.PodTemplateSpec
	if err := runtime.DefaultUnstructuredConverter.FromUnstructured(u, &out); err != nil {
		return t, fmt.Errorf("decode injected pod template: %w", err)
	}
	return out, nil
}

func child(m map[string]any, key string) (map[string]any, error) {
	switch v := m[key].(type) {
	case map[string]any:
		return v, nil
	case nil:
		c := map[string]any{}
		m[key] = c
		return c, nil
	default:
		return nil, fmt.Errorf("%s is a %T, not a mapping", key, v)
	}
}

func list(m map[string]any, key string) ([]any, error) {
	switch v := m[key].(type) {
	case []any:
		return v, nil
	case nil:
		return nil, nil
	default:
		return nil, fmt.Errorf("spec.%s is a %T, not a list", key, v)
	}
}

func prepend(spec map[string]any, key string, cs []corev1.Container) error {
	if len(cs) == 0 {
		return nil
	}
	items, err := list(spec, key)
	if err != nil {
		return err
	}
	out := make([]any, 0, len(cs)+len(items))
	for _, c := range cs {
		u, err := toGeneric(c)
		if err != nil {
			return err
		}
		out = append(out, u)
	}
	spec[key] = append(out, items...)
	return nil
}

// toGeneric renders v as JSON decodes it (numbers as float64, as a YAML or
// JSON document read with sigs.k8s.io/yaml holds them).
func toGeneric(v any) (map[string]any, error) {
	b, err := json.Marshal(v)
	if err != nil {
		return nil, fmt.Errorf("render %T: %w", v, err)
	}
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		return nil, fmt.Errorf("render %T: %w", v, err)
	}
	return m, nil
}

// PodTemplate decodes the metadata and spec of a generic template.
func PodTemplate(template map[string]any) (corev1.PodTemplateSpec, error) {
	var t corev1.PodTemplateSpec
	b, err := json.Marshal(map[string]any{"metadata": template["metadata"], "spec": template["spec"]})
	if err != nil {
		return t, fmt.Errorf("read pod template: %w", err)
	}
	if err := json.Unmarshal(b, &t); err != nil {
		return t, fmt.Errorf("read pod template: %w", err)
	}
	return t, nil
}
