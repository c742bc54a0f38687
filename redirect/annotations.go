package redirect

import (
	"fmt"
	"sort"
	"strings"

	"github.com/detour-mesh/detour/internal/excerpt"
)

// Kubernetes annotations (and namespace labels) that select and configure the
// redirection of a pod. The CNI plugin and the control plane's Kubernetes source
// both read them through FromAnnotations and RedirectRequested, so a pod's
// installed rules and its Envoy listeners are decoded the same way.
const (
	// AnnotationPrefix starts every detour annotation.
	AnnotationPrefix = "detour.io/"
	// AnnotationRedirect opts a pod in ("enabled") or out ("disabled").
	AnnotationRedirect = AnnotationPrefix + "redirect"
	// AnnotationConfig holds a whole Config document (YAML or JSON), applied
	// before the short forms.
	AnnotationConfig = AnnotationPrefix + "config"

	// AnnotationInject asks the sidecar injector (package inject) to add the
	// proxy ("enabled") or not ("disabled"); as a namespace label it opts the
	// namespace's pods in. It is not a redirect setting: FromAnnotations skips
	// it, and the injector's own settings use the prefix sidecar.detour.io/.
	AnnotationInject = AnnotationPrefix + "inject"

	// RedirectEnabled and RedirectDisabled are the values of AnnotationRedirect.
	RedirectEnabled  = "enabled"
	RedirectDisabled = "disabled"
)

// FieldAnnotation returns the short-form annotation that sets f:
// "detour.io/" + f.Name, for example detour.io/exclude-outbound-ports.
func FieldAnnotation(f Field) string { return AnnotationPrefix + f.Name }

// RedirectRequested reads AnnotationRedirect from annotations (or a namespace's
// labels): true for "enabled", false for "disabled" or when it is absent. Any
// other value is an error naming the annotation and the value (it matches
// ErrInvalid): a typo must not silently leave a pod unmeshed.
func RedirectRequested(annotations map[string]string) (bool, error) {
	v, ok := annotations[AnnotationRedirect]
	if !ok {
		return false, nil
	}
	switch strings.TrimSpace(v) {
	case RedirectEnabled:
		return true, nil
	case RedirectDisabled:
		return false, nil
	}
	return false, &FieldError{Field: AnnotationRedirect, Value: BoundedValue(v), Reason: "is not " + RedirectEnabled + " or " + RedirectDisabled}
}

// FromAnnotations returns base with a pod's detour annotations applied:
// first the whole document in AnnotationConfig (Config.Decode), then every short
// form "detour.io/<Field.Name>" (Config.Set with the field's path), so a short
// form wins over the document. Annotations outside AnnotationPrefix are ignored;
// AnnotationRedirect is the opt-in and AnnotationInject the injector's, and
// neither is read here; any other detour.io/
// key that names no field is an error, because a misspelt exclusion would
// otherwise capture traffic the user meant to exempt. An empty or blank short
// form of an include list whose empty value captures everything
// (Field.EmptyCaptures: detour.io/include-outbound-cidrs: "" from a template's
// unset value) is an error too, as on the command line; an empty exclusion
// list is accepted and clears the base's list.
//
// The result is validated as a whole. Errors match ErrInvalid, name the
// annotation, its value and the config field, and are deterministic (the
// first failing annotation in sorted key order); base is never modified.
func FromAnnotations(base Config, annotations map[string]string) (Config, error) {
	c := base.Clone()
	if doc, ok := annotations[AnnotationConfig]; ok {
		if err := c.Decode([]byte(doc)); err != nil {
			return Config{}, fmt.Errorf("annotation %s: %w", AnnotationConfig, boundedError(err))
		}
	}
	keys := make([]string, 0, len(annotations))
	for k := range annotations {
		if strings.HasPrefix(k, AnnotationPrefix) && k != AnnotationConfig && k != AnnotationRedirect && k != AnnotationInject {
			keys = append(keys, k)
		}
	}
	sort.Strings(keys)
	for _, k := range keys {
		v := annotations[k]
		f, ok := FieldByName(strings.TrimPrefix(k, AnnotationPrefix))
		if !ok {
			return Config{}, &FieldError{Field: k, Value: BoundedValue(v), Reason: "is not a detour annotation (" + AnnotationConfig + ", " + AnnotationRedirect + " or detour.io/<field name>, e.g. detour.io/exclude-outbound-ports)"}
		}
		if err := EmptyIncludeError(f, v, "leave the annotation out for that, the default"); err != nil {
			return Config{}, fmt.Errorf("annotation %s %q: %w", k, BoundedValue(v), boundedError(err))
		}
		if err := c.Set(f.Path, v); err != nil {
			return Config{}, fmt.Errorf("annotation %s %q: %w", k, BoundedValue(v), boundedError(err))
		}
	}
	if err := c.Validate(); err != nil {
		return Config{}, fmt.Errorf("config from annotations: %w", err)
	}
	return c, nil
}

// maxQuotedValue bounds an annotation's value quoted in an error: an
// annotation holds up to 256 KB, and the error goes to the CNI plugin's log at
// every sandbox retry, into the webhook's refusal and the control plane's log
// and /debug/nodes. A longer value is quoted as its first bytes and its size,
// as the mesh file's errors quote theirs.
const maxQuotedValue = 200

// BoundedValue is s to quote in an error: s itself, or when longer than 200
// bytes its first 200 bytes and its size ("yyyy… (200000 bytes)").
func BoundedValue(s string) string { return excerpt.Of(s, maxQuotedValue) }

// boundedError bounds the value a *FieldError quotes (Config.Set quotes
// the whole list when the list itself is malformed).
func boundedError(err error) error {
	fe, ok := err.(*FieldError)
	if !ok || len(fe.Value) <= maxQuotedValue {
		return err
	}
	c := *fe
	c.Value = BoundedValue(c.Value)
	return &c
}
