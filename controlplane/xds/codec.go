package xds

import (
	"fmt"

	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/known/anypb"
)

// xdsCodec marshals responses into xdsBufferPool (buffer.go); delta
// discovery responses are encoded by hand (their resources' Any values are
// copied from the shared encodings, not re-marshalled). Every response is
// one pooled buffer that the connection's writer (h2write.go) gives back
// once written, which is when a push worker sends its next response
// (pace.go): a few buffers are in use at a time, reused change after
// change, however many proxies connect at once. Requests are decoded by
// proto.Unmarshal (h2conn.go).
//
// Delta responses used to reference each resource's encoding between small
// copied headers instead: no copy, but about 20 KiB of pieces and headers
// per proxy's first response, all garbage, which took the heap to the
// collector's goal while a fleet connected (delta peaked 30–40 MiB above
// SotW at 1,000 proxies); and the writer handles each piece separately
// (referencing SotW responses too was measured at twice the CPU per change).
type xdsCodec struct {
	// flights, when set, are the messages whose writing a push worker
	// waits for (pace.go).
	flights *flights
}

func newXDSCodec(fs *flights) xdsCodec {
	return xdsCodec{flights: fs}
}

// Marshal encodes v into a response that the caller releases once.
func (c xdsCodec) Marshal(v any) (*response, error) {
	f := c.flights.take(v)
	r, err := c.marshal(v, f, xdsBufferPool)
	if err != nil {
		f.finish() // nothing to wait for
	}
	return r, err
}

// marshal encodes v into a response of pool; a pooled one finishes f when
// released.
func (c xdsCodec) marshal(v any, f *flight, pool *bufferPool) (*response, error) {
	if m, ok := v.(*discoveryv3.DeltaDiscoveryResponse); ok && len(m.GetResources()) > 0 {
		return marshalDelta(m, f, pool)
	}
	m, ok := v.(proto.Message)
	if !ok {
		return nil, fmt.Errorf("marshal %T: not a proto message", v)
	}
	opts := proto.MarshalOptions{UseCachedSize: true}
	size := opts.Size(m)
	r := newResponse(size, pool, f)
	b, err := opts.MarshalAppend(r.data[:0], m)
	if err == nil && !filled(b, r.data) {
		err = fmt.Errorf("encoded %d bytes, %d expected", len(b), size) // cannot happen: the size is proto.Size's
	}
	if err != nil {
		r.release()
		return nil, err
	}
	return r, nil
}

// filled reports whether b, appended to data[:0], is exactly data: a
// pooled buffer holds what it held before, and must be overwritten whole.
func filled(b, data []byte) bool {
	return len(b) == len(data) && (len(b) == 0 || &b[0] == &data[0])
}

// resourcesField is the field number of DeltaDiscoveryResponse.resources.
const resourcesField = 2

// marshalDelta encodes m's fields other than resources as usual, then its
// resources as field 2, each by appendDeltaResource, into one response of
// pool (finishing f when released). Fields may come in any order on the
// wire; repeated fields keep theirs.
func marshalDelta(m *discoveryv3.DeltaDiscoveryResponse, f *flight, pool *bufferPool) (*response, error) {
	src := m.ProtoReflect()
	rest := src.New()
	src.Range(func(fd protoreflect.FieldDescriptor, v protoreflect.Value) bool {
		if fd.Number() != resourcesField {
			rest.Set(fd, v)
		}
		return true
	})
	rest.SetUnknown(src.GetUnknown())
	size := proto.Size(rest.Interface())
	rs := m.GetResources()
	for _, r := range rs {
		size += deltaEntrySize(r)
	}
	r := newResponse(size, pool, f)
	b, err := proto.MarshalOptions{}.MarshalAppend(r.data[:0], rest.Interface())
	for _, r := range rs {
		if err != nil {
			break
		}
		b, err = appendDeltaResource(b, r)
	}
	if err == nil && !filled(b, r.data) {
		err = fmt.Errorf("encoded %d bytes, %d expected", len(b), size) // cannot happen: the sizes are proto.Size's
	}
	if err != nil {
		r.release()
		return nil, fmt.Errorf("marshal %s: %w", src.Descriptor().FullName(), err)
	}
	return r, nil
}

// anySize is the encoded size of a; ok is false when a has unknown fields,
// which only proto.Marshal encodes.
func anySize(a *anypb.Any) (size int, ok bool) {
	if len(a.ProtoReflect().GetUnknown()) != 0 {
		return 0, false
	}
	if tu := a.GetTypeUrl(); tu != "" {
		size += protowire.SizeTag(1) + protowire.SizeBytes(len(tu))
	}
	if v := a.GetValue(); len(v) > 0 {
		size += protowire.SizeTag(2) + protowire.SizeBytes(len(v))
	}
	return size, true
}

// appendAnyMessage appends the length and encoding of a. Encoding an Any by
// hand rather than with proto.Marshal matters: a push encodes a hundred
// thousand of them.
func appendAnyMessage(b []byte, a *anypb.Any) ([]byte, error) {
	size, ok := anySize(a)
	if !ok {
		b = protowire.AppendVarint(b, uint64(proto.Size(a)))
		return proto.MarshalOptions{}.MarshalAppend(b, a)
	}
	b = protowire.AppendVarint(b, uint64(size))
	if tu := a.GetTypeUrl(); tu != "" {
		b = protowire.AppendTag(b, 1, protowire.BytesType)
		b = protowire.AppendString(b, tu)
	}
	if v := a.GetValue(); len(v) > 0 {
		b = protowire.AppendTag(b, 2, protowire.BytesType)
		b = protowire.AppendBytes(b, v)
	}
	return b, nil
}

// resourceField is the field number of resource in discovery.v3.Resource.
const resourceField = 2

// plainResource returns the size of r when r holds nothing but a name, a
// version and an Any without unknown fields; ok is false otherwise (it is
// then marshalled whole). Comparing with proto.Size keeps fields added to
// Resource later from being dropped.
func plainResource(r *discoveryv3.Resource) (size int, ok bool) {
	a := r.GetResource()
	if a == nil {
		return 0, false
	}
	as, ok := anySize(a)
	if !ok {
		return 0, false
	}
	if n := r.GetName(); n != "" {
		size += protowire.SizeTag(3) + protowire.SizeBytes(len(n))
	}
	if v := r.GetVersion(); v != "" {
		size += protowire.SizeTag(1) + protowire.SizeBytes(len(v))
	}
	size += protowire.SizeTag(resourceField) + protowire.SizeBytes(as)
	if size != proto.Size(r) {
		return 0, false
	}
	return size, true
}

// deltaEntrySize is how many bytes appendDeltaResource appends for r.
func deltaEntrySize(r *discoveryv3.Resource) int {
	size, ok := plainResource(r)
	if !ok {
		size = proto.Size(r)
	}
	return protowire.SizeTag(resourcesField) + protowire.SizeBytes(size)
}

// appendDeltaResource appends r as a resources entry (field 2) of a
// DeltaDiscoveryResponse: name and version, then its Any last.
func appendDeltaResource(b []byte, r *discoveryv3.Resource) ([]byte, error) {
	b = protowire.AppendTag(b, resourcesField, protowire.BytesType)
	size, ok := plainResource(r)
	if !ok {
		b = protowire.AppendVarint(b, uint64(proto.Size(r)))
		return proto.MarshalOptions{}.MarshalAppend(b, r)
	}
	b = protowire.AppendVarint(b, uint64(size))
	if n := r.GetName(); n != "" {
		b = protowire.AppendTag(b, 3, protowire.BytesType)
		b = protowire.AppendString(b, n)
	}
	if v := r.GetVersion(); v != "" {
		b = protowire.AppendTag(b, 1, protowire.BytesType)
		b = protowire.AppendString(b, v)
	}
	b = protowire.AppendTag(b, resourceField, protowire.BytesType)
	return appendAnyMessage(b, r.GetResource())
}
