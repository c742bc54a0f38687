package controlplane

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"net/netip"
	"os"
	"slices"
	"strconv"
	"strings"

	"sigs.k8s.io/yaml"

	"github.com/detour-mesh/detour/internal/regularfile"
	"github.com/detour-mesh/detour/redirect"
)

// DefaultMaxMeshSize is the largest mesh file LoadMesh and FileSource read
// (FileSource.MaxSize changes it): 4 MiB, four times a 10,000-workload mesh
// written in block style. A larger file is refused before it is read, because
// decoding YAML costs about 50 times the file's size in memory for a moment
// (a 4 MiB file about 200 MiB).
const DefaultMaxMeshSize = 4 << 20

// LoadMesh reads and decodes the mesh file at path (DecodeMesh). A file larger
// than DefaultMaxMeshSize is refused unread. path may be a pipe (`--mesh
// <(…)`): it is read once.
func LoadMesh(path string) (*Mesh, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, unreadable(path, err)
	}
	defer f.Close()
	b, err := readMeshFile(f, path, DefaultMaxMeshSize)
	if err != nil {
		return nil, err
	}
	m, err := DecodeMesh(b)
	if err != nil {
		return nil, fmt.Errorf("mesh file %s: %w", path, err)
	}
	return m, nil
}

// openWatchedMeshFile opens the mesh file FileSource reads again and again. It
// must be a regular file (or a symlink to one): a FIFO would block the open
// (O_NONBLOCK keeps it from doing so) and a pipe holds its content only once.
func openWatchedMeshFile(path string) (*os.File, error) {
	f, err := regularfile.Open(path)
	if kind := regularfile.Kind(err); kind != "" {
		return nil, fmt.Errorf("mesh file %s: %w", path, &redirect.FieldError{Field: "(document)", Value: path,
			Reason: "is not a regular file (" + kind + "); the watched mesh file is read again at every change"})
	}
	if err != nil {
		return nil, unreadable(path, err)
	}
	return f, nil
}

// unreadableError is a mesh file that cannot be opened or read: invalid input
// (redirect.ErrInvalid, exit 2 at start) that still matches the os error
// (os.ErrNotExist, os.ErrPermission).
type unreadableError struct {
	field *redirect.FieldError
	err   error
}

func unreadable(path string, err error) error {
	reason := err
	var pe *os.PathError
	if errors.As(err, &pe) {
		reason = pe.Err
	}
	return &unreadableError{field: &redirect.FieldError{Field: "mesh file", Value: path, Reason: "cannot be read: " + reason.Error()}, err: err}
}

func (e *unreadableError) Error() string   { return e.field.Error() }
func (e *unreadableError) Unwrap() []error { return []error{e.field, e.err} }

// readMeshFile reads f (opened from path) if it holds at most limit bytes. The
// size is checked before reading (and the read is bounded too, for files whose
// size the file system does not know); a larger file is a
// *redirect.FieldError.
func readMeshFile(f *os.File, path string, limit int64) ([]byte, error) {
	tooLarge := func(size string) error {
		return fmt.Errorf("mesh file %s: %w", path, &redirect.FieldError{Field: "(document)", Value: size,
			Reason: fmt.Sprintf("is larger than the maximum mesh file size, %d bytes", limit)})
	}
	if fi, err := f.Stat(); err == nil && fi.Mode().IsRegular() && fi.Size() > limit {
		return nil, tooLarge(fmt.Sprintf("%d bytes", fi.Size()))
	}
	b, err := io.ReadAll(io.LimitReader(f, limit+1))
	if err != nil {
		return nil, unreadable(path, err)
	}
	if int64(len(b)) > limit {
		return nil, tooLarge(fmt.Sprintf("more than %d bytes", limit))
	}
	return b, nil
}

// DecodeMesh decodes a mesh document (YAML or JSON; docs/mesh.md describes every
// field) and validates it. Every error is a *redirect.FieldError naming the
// field (services[1].ports[0].port) and its value, and matches
// redirect.ErrInvalid; unknown keys are errors.
//
// A workload's transparentProxy is decoded exactly like `detour install
// --config`: redirect.Default(), then the mesh's top-level transparentProxy
// document, then the workload's own, through redirect.Config.Decode. So the
// ports the installer captures to are the ports the listeners use.
func DecodeMesh(doc []byte) (*Mesh, error) {
	// Strict: a key given twice is an error, not whichever came last (a
	// merge gone wrong would otherwise pick a policy silently).
	if n := redirect.Documents(doc); n > 1 {
		// YAML to JSON would keep the first and drop the rest silently
		// (their services and workloads never served).
		return nil, &redirect.FieldError{Field: "(document)", Value: "---", Reason: fmt.Sprintf("starts another YAML document (%d hold settings); a mesh file is one document", n)}
	}
	js, err := yaml.YAMLToJSONStrict(doc)
	if err != nil {
		return nil, &redirect.FieldError{Field: "(document)", Value: yamlError(err), Reason: "is not valid YAML or JSON"}
	}
	dec := json.NewDecoder(bytes.NewReader(js))
	dec.UseNumber()
	var tree any
	if err := dec.Decode(&tree); err != nil {
		return nil, &redirect.FieldError{Field: "(document)", Value: firstLine(err.Error()), Reason: "is not valid YAML or JSON"}
	}
	if tree == nil {
		// Nothing but whitespace and comments, or a bare null: what a file
		// being written, truncated or emptied by mistake reads as. Serving it
		// would take every workload's config away.
		return nil, &redirect.FieldError{Field: "(document)", Value: "", Reason: "is empty; a mesh file needs at least one key (an empty mesh is written {})"}
	}
	// YAML to JSON made 0443 the number 291 already; the walk compares
	// with the document as written. transparentProxy blocks are checked
	// here too: they reach redirect.Config.Decode re-encoded as JSON.
	if err := redirect.LeadingZero(doc, tree); err != nil {
		return nil, err
	}
	d := &decoder{}
	m := d.mesh(value{"", tree})
	if err := d.errs.err(); err != nil {
		return nil, err
	}
	if err := m.Validate(); err != nil {
		return nil, err
	}
	return m, nil
}

// yamlError is the YAML decoder's message on one line: "yaml: unmarshal
// errors:" is followed by one indented line per error (a duplicate key).
func yamlError(err error) string {
	return strings.Join(strings.Fields(err.Error()), " ")
}

func firstLine(s string) string {
	s, _, _ = strings.Cut(s, "\n")
	return s
}

// decoder collects every error of a document instead of stopping at the first,
// so a user fixes a file in one pass.
type decoder struct {
	errs errorList
}

// value is a node of the decoded document and its path.
type value struct {
	path string
	v    any
}

func (d *decoder) bad(path string, v any, reason string) {
	if d.errs.len() >= MaxReportedErrors {
		d.errs.more++ // counted only: compact would render a value nobody reads
		return
	}
	d.errs.add(&redirect.FieldError{Field: path, Value: compact(v), Reason: reason})
}

func compact(v any) string {
	switch v := v.(type) {
	case string:
		return v
	case nil:
		return "null"
	}
	b, err := json.Marshal(v)
	if err != nil {
		return fmt.Sprint(v)
	}
	return string(b)
}

func (v value) child(key string) value {
	if v.path == "" {
		return value{key, nil}
	}
	return value{v.path + "." + key, nil}
}

// mapping returns the keys of a mapping, reporting keys not in allowed.
func (d *decoder) mapping(v value, allowed ...string) (map[string]value, bool) {
	m, ok := v.v.(map[string]any)
	if !ok {
		if v.v != nil {
			d.bad(pathOr(v.path), v.v, "is not a mapping")
		}
		return nil, false
	}
	out := make(map[string]value, len(m))
	for _, k := range slices.Sorted(maps.Keys(m)) {
		c := v.child(k)
		c.v = m[k]
		if allowed != nil && !slices.Contains(allowed, k) {
			d.bad(c.path, m[k], "is not a known field (one of "+strings.Join(allowed, ", ")+")")
			continue
		}
		out[k] = c
	}
	return out, true
}

func pathOr(p string) string {
	if p == "" {
		return "(document)"
	}
	return p
}

func (d *decoder) list(v value) []value {
	if v.v == nil {
		return nil
	}
	l, ok := v.v.([]any)
	if !ok {
		d.bad(v.path, v.v, "is not a list")
		return nil
	}
	out := make([]value, len(l))
	for i, item := range l {
		out[i] = value{fmt.Sprintf("%s[%d]", v.path, i), item}
	}
	return out
}

func (d *decoder) str(v value) (string, bool) {
	switch s := v.v.(type) {
	case string:
		return s, true
	case json.Number:
		return s.String(), true
	case nil:
		return "", true
	}
	d.bad(v.path, v.v, "is not a string")
	return "", false
}

func (d *decoder) port(v value) uint16 {
	if v.v == nil {
		return 0
	}
	s, ok := d.str(v)
	if !ok {
		return 0
	}
	p, err := redirect.ParsePort(s)
	if err != nil {
		d.bad(v.path, v.v, "is not a port (1-65535)")
		return 0
	}
	return p
}

func (d *decoder) addr(v value) netip.Addr {
	s, ok := d.str(v)
	if !ok {
		return netip.Addr{}
	}
	a, err := redirect.ParseAddr(s)
	if err != nil {
		d.bad(v.path, v.v, "is not an IP address")
		return netip.Addr{}
	}
	return a
}

func (d *decoder) addrs(v value) []netip.Addr {
	var out []netip.Addr
	for _, item := range d.list(v) {
		if a := d.addr(item); a.IsValid() {
			out = append(out, a)
		}
	}
	return out
}

func (d *decoder) labels(v value) map[string]string {
	m, ok := d.mapping(v)
	if !ok || len(m) == 0 {
		return nil
	}
	out := make(map[string]string, len(m))
	for k, c := range m {
		switch s := c.v.(type) {
		case string:
			out[k] = s
		case json.Number:
			out[k] = s.String()
		case bool:
			out[k] = strconv.FormatBool(s)
		default:
			d.bad(c.path, c.v, "is not a label value (a string)")
		}
	}
	return out
}

func (d *decoder) protocol(v value) Protocol {
	if v.v == nil {
		return ProtocolTCP
	}
	s, ok := d.str(v)
	if !ok {
		return ""
	}
	switch p := Protocol(strings.ToLower(s)); p {
	case ProtocolTCP, ProtocolHTTP:
		return p
	}
	d.bad(v.path, v.v, "is not one of tcp, http")
	return Protocol(s)
}

// redirectConfig applies the transparentProxy document v on top of base with
// redirect.Config.Decode, prefixing the error fields with v's path.
func (d *decoder) redirectConfig(base redirect.Config, v value) redirect.Config {
	if v.v == nil {
		return base
	}
	if _, ok := v.v.(map[string]any); !ok {
		d.bad(v.path, v.v, "is not a mapping (a redirect config document)")
		return base
	}
	doc, err := json.Marshal(v.v)
	if err != nil {
		d.bad(v.path, v.v, "cannot be re-encoded: "+err.Error())
		return base
	}
	c := base.Clone()
	if err := c.Decode(doc); err != nil {
		d.errs.add(prefixFieldErrors(v.path+".", err))
		return base
	}
	return c
}

func (d *decoder) mesh(v value) *Mesh {
	m := &Mesh{OutboundPolicy: AllowAny}
	top, ok := d.mapping(v, "outboundPolicy", "allowMassRemoval", "dns", "transparentProxy", "services", "workloads")
	if !ok {
		if v.v != nil {
			return m
		}
	}
	if p, ok := top["outboundPolicy"]; ok && p.v != nil {
		s, _ := d.str(p)
		m.OutboundPolicy = OutboundPolicy(s)
		if m.OutboundPolicy != AllowAny && m.OutboundPolicy != RegistryOnly {
			d.bad(p.path, p.v, "is not one of allow-any, registry-only")
		}
	}
	if a, ok := top["allowMassRemoval"]; ok && a.v != nil {
		b, isBool := a.v.(bool)
		if !isBool {
			d.bad(a.path, a.v, "is not true or false")
		}
		m.AllowMassRemoval = b
	}
	m.DNS = d.dns(top["dns"])
	base := d.redirectConfig(redirect.Default(), top["transparentProxy"])
	// Sized up front: a Workload holds a whole redirect.Config, and growing
	// the slice by appending copied ten thousand of them several times.
	services, workloads := d.list(top["services"]), d.list(top["workloads"])
	if len(services) > 0 {
		m.Services = make([]Service, 0, len(services))
	}
	for _, sv := range services {
		m.Services = append(m.Services, d.service(sv))
	}
	if len(workloads) > 0 {
		m.Workloads = make([]Workload, 0, len(workloads))
	}
	for _, wv := range workloads {
		m.Workloads = append(m.Workloads, d.workload(base, wv))
	}
	return m
}

func (d *decoder) dns(v value) DNS {
	var out DNS
	f, ok := d.mapping(v, "suffix", "upstreams")
	if !ok {
		return out
	}
	sv := f["suffix"]
	out.Suffix, _ = d.str(sv)
	out.Suffix = strings.TrimSuffix(out.Suffix, ".")
	if given, isStr := sv.v.(string); isStr && out.Suffix == "" {
		// Written on purpose (not left out): "" or "." is no suffix, and
		// falling back to the default would answer names the file did not ask for.
		d.bad(sv.path, given, "is empty; leave the key out for the default suffix "+DefaultDNSSuffix)
	}
	for _, uv := range d.list(f["upstreams"]) {
		s, ok := d.str(uv)
		if !ok {
			continue
		}
		ap, err := ParseDNSUpstream(s)
		if err != nil {
			d.bad(uv.path, uv.v, err.Error())
			continue
		}
		out.Upstreams = append(out.Upstreams, ap)
	}
	return out
}

// ParseDNSUpstream parses an upstream resolver of DNS.Upstreams: an IP address
// (port 53) or address:port ("[2001:db8::53]:5353"). The error is a reason to
// put after the value.
func ParseDNSUpstream(s string) (netip.AddrPort, error) {
	if a, err := redirect.ParseAddr(s); err == nil {
		return netip.AddrPortFrom(a, 53), nil
	}
	ap, err := netip.ParseAddrPort(s)
	if err != nil {
		return netip.AddrPort{}, errors.New("is not an IP address or address:port")
	}
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port()), nil
}

func (d *decoder) service(v value) Service {
	var s Service
	f, ok := d.mapping(v, "name", "virtualIPs", "ports", "selector", "endpoints")
	if !ok {
		if v.v == nil {
			d.bad(v.path, nil, "is not a mapping")
		}
		return s
	}
	s.Name, _ = d.str(f["name"])
	s.VirtualIPs = d.addrs(f["virtualIPs"])
	for _, pv := range d.list(f["ports"]) {
		s.Ports = append(s.Ports, d.servicePort(pv))
	}
	s.Selector = d.labels(f["selector"])
	for _, ev := range d.list(f["endpoints"]) {
		s.Endpoints = append(s.Endpoints, d.endpoint(ev))
	}
	return s
}

func (d *decoder) servicePort(v value) ServicePort {
	var p ServicePort
	switch v.v.(type) {
	case json.Number, string:
		// "ports: [80, 443]" is short for tcp ports with default names.
		p.Port = d.port(v)
		p.TargetPort, p.Protocol, p.Name = p.Port, ProtocolTCP, strconv.Itoa(int(p.Port))
		return p
	}
	f, ok := d.mapping(v, "name", "port", "targetPort", "protocol")
	if !ok {
		return p
	}
	p.Port = d.port(f["port"])
	if _, set := f["port"]; !set {
		d.bad(v.path+".port", "", "is missing")
	}
	p.TargetPort = d.port(f["targetPort"])
	if f["targetPort"].v == nil {
		p.TargetPort = p.Port
	}
	p.Protocol = d.protocol(f["protocol"])
	p.Name, _ = d.str(f["name"])
	if p.Name == "" {
		p.Name = strconv.Itoa(int(p.Port))
	}
	return p
}

func (d *decoder) endpoint(v value) Endpoint {
	var e Endpoint
	if _, scalar := v.v.(string); scalar {
		e.Address = d.addr(v)
		return e
	}
	f, ok := d.mapping(v, "address", "targetPorts")
	if !ok {
		return e
	}
	e.Address = d.addr(f["address"])
	if tp, ok := d.mapping(f["targetPorts"]); ok && len(tp) > 0 {
		e.TargetPorts = make(map[string]uint16, len(tp))
		for k, pv := range tp {
			e.TargetPorts[k] = d.port(pv)
		}
	}
	return e
}

func (d *decoder) workload(base redirect.Config, v value) Workload {
	w := Workload{TransparentProxy: base.Clone()}
	f, ok := d.mapping(v, "nodeId", "addresses", "labels", "inbound", "reach", "transparentProxy")
	if !ok {
		if v.v == nil {
			d.bad(v.path, nil, "is not a mapping")
		}
		return w
	}
	w.NodeID, _ = d.str(f["nodeId"])
	w.Addresses = d.addrs(f["addresses"])
	w.Labels = d.labels(f["labels"])
	for _, pv := range d.list(f["inbound"]) {
		w.Inbound = append(w.Inbound, d.inboundPort(pv))
	}
	for _, rv := range d.list(f["reach"]) {
		if s, ok := d.str(rv); ok {
			w.Reach = append(w.Reach, s)
		}
	}
	w.TransparentProxy = d.redirectConfig(w.TransparentProxy, f["transparentProxy"])
	return w
}

func (d *decoder) inboundPort(v value) InboundPort {
	var p InboundPort
	switch v.v.(type) {
	case json.Number, string:
		p.Port = d.port(v)
		p.AppPort, p.Protocol = p.Port, ProtocolTCP
		return p
	}
	f, ok := d.mapping(v, "port", "appPort", "protocol")
	if !ok {
		return p
	}
	p.Port = d.port(f["port"])
	if _, set := f["port"]; !set {
		d.bad(v.path+".port", "", "is missing")
	}
	p.AppPort = d.port(f["appPort"])
	if f["appPort"].v == nil {
		p.AppPort = p.Port
	}
	p.Protocol = d.protocol(f["protocol"])
	return p
}
