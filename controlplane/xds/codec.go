package xds

import (
	"fmt"

	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"google.golang.org/grpc/encoding"
	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/known/anypb"
)

// xdsBufferPool has power-of-two tiers from 256 B to 1 MiB. gRPC's default
// pool jumps from 32 KiB to 1 MiB: each larger message marshalled into it
// would take (and zero) a 1 MiB buffer.
var xdsBufferPool = mustBufferPool(8, 10, 12, 13, 14, 15, 16, 17, 18, 19, 20)

func mustBufferPool(exponents ...uint8) mem.BufferPool {
	p, err := mem.NewBinaryTieredBufferPool(exponents...)
	if err != nil {
		panic(err) // only for exponents beyond the word size
	}
	return p
}

// xdsCodec is gRPC's proto codec marshalling into xdsBufferPool (the stock
// codec always uses gRPC's default pool), except that delta discovery
// responses are marshalled without copying their resources: the message gRPC
// writes is a list of buffers in which each resource's encoded bytes (an Any's
// value, shared by every response that carries the resource) are referenced
// between small headers. A delta stream is sent every resource once, when it
// connects: a thousand proxies connecting at once would otherwise each take a
// copy of their whole configuration from the pool until written, and leave
// those buffers in the pool. SotW responses, which carry every resource on
// every change, keep marshalling into pooled buffers: referencing their
// resources too was measured at twice the control plane's CPU per change
// (gRPC's writer handles each referenced piece separately), with no clearly
// lower peak RSS at 1,000 proxies.
type xdsCodec struct {
	encoding.CodecV2 // the stock codec, for Unmarshal
	// flights, when set, are the messages whose writing a push worker
	// waits for (pace.go).
	flights *flights
}

func newXDSCodec(fs *flights) xdsCodec {
	return xdsCodec{CodecV2: encoding.GetCodecV2("proto"), flights: fs}
}

func (c xdsCodec) Marshal(v any) (mem.BufferSlice, error) {
	f := c.flights.take(v)
	bs, err := c.marshal(v, f)
	if f != nil && (err != nil || !pooled(bs)) {
		f.finish() // nothing to wait for
	}
	return bs, err
}

// pooled reports whether bs is one pooled buffer (what marshal returns for a
// message it copies whole into the pool).
func pooled(bs mem.BufferSlice) bool {
	if len(bs) != 1 {
		return false
	}
	_, plain := bs[0].(mem.SliceBuffer)
	return !plain
}

// marshal encodes v; a pooled buffer finishes f when it is put back.
func (c xdsCodec) marshal(v any, f *flight) (mem.BufferSlice, error) {
	if m, ok := v.(*discoveryv3.DeltaDiscoveryResponse); ok && len(m.GetResources()) > 0 {
		rs := m.GetResources()
		return marshalResponse(m, len(rs), func(i int) int { return deltaHint(rs[i]) },
			func(b []byte, i int) ([]byte, []byte, error) { return appendDeltaResource(b, rs[i]) })
	}
	m, ok := v.(proto.Message)
	if !ok {
		return nil, fmt.Errorf("marshal %T: not a proto message", v)
	}
	opts := proto.MarshalOptions{UseCachedSize: true}
	size := opts.Size(m)
	if mem.IsBelowBufferPoolingThreshold(size) {
		b, err := opts.Marshal(m)
		if err != nil {
			return nil, err
		}
		return mem.BufferSlice{mem.SliceBuffer(b)}, nil
	}
	var pool mem.BufferPool = xdsBufferPool
	if f != nil {
		pool = flightPool{f}
	}
	buf := pool.Get(size)
	if _, err := opts.MarshalAppend((*buf)[:0], m); err != nil {
		pool.Put(buf)
		return nil, err
	}
	return mem.BufferSlice{mem.NewBuffer(buf, pool)}, nil
}

// resourcesField is the field number of DeltaDiscoveryResponse.resources.
const resourcesField = 2

// referenceMin is the smallest value referenced rather than copied: below it,
// a buffer of its own costs more than the copy.
const referenceMin = 256

// marshalResponse encodes m's fields other than resources as usual, then its
// n resources as field 2 with appendResource, which appends a resource's
// encoding up to a value it returns to be referenced instead of copied
// (nil when it copied everything), given a buffer with room for sizeHint(i)
// bytes. Fields may come in any order on the wire; repeated fields keep
// theirs.
func marshalResponse(m proto.Message, n int, sizeHint func(i int) int, appendResource func(b []byte, i int) (head, value []byte, err error)) (mem.BufferSlice, error) {
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
	for i := range n {
		size += sizeHint(i)
	}
	b, err := proto.MarshalOptions{}.MarshalAppend(make([]byte, 0, size), rest.Interface())
	if err != nil {
		return nil, fmt.Errorf("marshal %s: %w", src.Descriptor().FullName(), err)
	}
	// Each piece is sliced off b once written: should b grow after all, the
	// pieces keep pointing at the bytes written so far.
	var out mem.BufferSlice
	from := 0
	for i := range n {
		var value []byte
		b, value, err = appendResource(b, i)
		if err != nil {
			return nil, err
		}
		if value != nil {
			if out == nil {
				out = make(mem.BufferSlice, 0, 2*n+1)
			}
			out = append(out, mem.SliceBuffer(b[from:]), mem.SliceBuffer(value))
			b, from = b[len(b):], 0
		}
	}
	if len(b) > from || out == nil {
		out = append(out, mem.SliceBuffer(b[from:]))
	}
	return out, nil
}

// anySize is the encoded size of a and the size of what appendAnyMessage
// copies of it (all of it unless its value is referenced); ok is false when a
// has unknown fields, which only proto.Marshal encodes.
func anySize(a *anypb.Any) (size, copied int, ok bool) {
	if len(a.ProtoReflect().GetUnknown()) != 0 {
		return 0, 0, false
	}
	tu, v := a.GetTypeUrl(), a.GetValue()
	if tu != "" {
		size += protowire.SizeTag(1) + protowire.SizeBytes(len(tu))
	}
	if len(v) > 0 {
		size += protowire.SizeTag(2) + protowire.SizeVarint(uint64(len(v)))
	}
	if len(v) < referenceMin {
		return size + len(v), size + len(v), true
	}
	return size + len(v), size, true
}

// appendAnyMessage appends the length and encoding of a, except for a value
// it references, which it returns instead. Encoding an Any by hand rather
// than with proto.Marshal matters: a push encodes a hundred thousand of them.
func appendAnyMessage(b []byte, a *anypb.Any) ([]byte, []byte, error) {
	size, _, ok := anySize(a)
	if !ok {
		b = protowire.AppendVarint(b, uint64(proto.Size(a)))
		b, err := proto.MarshalOptions{}.MarshalAppend(b, a)
		return b, nil, err
	}
	tu, v := a.GetTypeUrl(), a.GetValue()
	b = protowire.AppendVarint(b, uint64(size))
	if tu != "" {
		b = protowire.AppendTag(b, 1, protowire.BytesType)
		b = protowire.AppendString(b, tu)
	}
	if len(v) == 0 {
		return b, nil, nil
	}
	b = protowire.AppendTag(b, 2, protowire.BytesType)
	b = protowire.AppendVarint(b, uint64(len(v)))
	if len(v) < referenceMin {
		return append(b, v...), nil, nil
	}
	return b, v, nil
}

// resourceField is the field number of resource in discovery.v3.Resource.
const resourceField = 2

// plainResource returns the size of r and of what appendDeltaResource copies
// of it when r holds nothing but a name, a version and an Any without unknown
// fields; ok is false otherwise (it is then copied whole). Comparing with
// proto.Size keeps fields added to Resource later from being dropped.
func plainResource(r *discoveryv3.Resource) (size, copied int, ok bool) {
	a := r.GetResource()
	if a == nil {
		return 0, 0, false
	}
	as, ac, ok := anySize(a)
	if !ok {
		return 0, 0, false
	}
	if n := r.GetName(); n != "" {
		size += protowire.SizeTag(3) + protowire.SizeBytes(len(n))
	}
	if v := r.GetVersion(); v != "" {
		size += protowire.SizeTag(1) + protowire.SizeBytes(len(v))
	}
	copied = size + protowire.SizeTag(resourceField) + protowire.SizeVarint(uint64(as)) + ac
	size += protowire.SizeTag(resourceField) + protowire.SizeBytes(as)
	if size != proto.Size(r) {
		return 0, 0, false
	}
	return size, copied, true
}

// deltaHint is how many bytes appendDeltaResource appends for r.
func deltaHint(r *discoveryv3.Resource) int {
	size, copied, ok := plainResource(r)
	if !ok {
		size = proto.Size(r)
		copied = size
	}
	return protowire.SizeTag(resourcesField) + protowire.SizeVarint(uint64(size)) + copied
}

// appendDeltaResource appends r as a resources entry (field 2) of a
// DeltaDiscoveryResponse: name and version, then its Any last.
func appendDeltaResource(b []byte, r *discoveryv3.Resource) ([]byte, []byte, error) {
	b = protowire.AppendTag(b, resourcesField, protowire.BytesType)
	size, _, ok := plainResource(r)
	if !ok {
		b = protowire.AppendVarint(b, uint64(proto.Size(r)))
		b, err := proto.MarshalOptions{}.MarshalAppend(b, r)
		return b, nil, err
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
