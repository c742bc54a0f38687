package controlplane

import (
	"fmt"

	"google.golang.org/grpc/encoding"
	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/proto"
)

// xdsBufferPool has power-of-two tiers from 256 B to 1 MiB. gRPC's default
// pool jumps from 32 KiB to 1 MiB, and a response of a hundred listeners is
// 40–60 KiB: each one sent would take (and zero) a 1 MiB buffer, which for a
// push to a thousand proxies is a gigabyte of memory traffic.
var xdsBufferPool = mustBufferPool(8, 10, 12, 13, 14, 15, 16, 17, 18, 19, 20)

func mustBufferPool(exponents ...uint8) mem.BufferPool {
	p, err := mem.NewBinaryTieredBufferPool(exponents...)
	if err != nil {
		panic(err) // only for exponents beyond the word size
	}
	return p
}

// xdsCodec is gRPC's proto codec marshalling into xdsBufferPool: the stock
// codec always uses the default pool, whatever the server's pool option says.
type xdsCodec struct {
	encoding.CodecV2 // the stock codec, for Unmarshal
}

func newXDSCodec() xdsCodec { return xdsCodec{CodecV2: encoding.GetCodecV2("proto")} }

func (c xdsCodec) Marshal(v any) (mem.BufferSlice, error) {
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
	buf := xdsBufferPool.Get(size)
	if _, err := opts.MarshalAppend((*buf)[:0], m); err != nil {
		xdsBufferPool.Put(buf)
		return nil, err
	}
	return mem.BufferSlice{mem.NewBuffer(buf, xdsBufferPool)}, nil
}
