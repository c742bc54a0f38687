//go:build 386 || arm || mipsle

package bpf

import "unsafe"

// attrPointer is a pointer in a bpf_attr, a __u64 the kernel reads: on a
// 32-bit little-endian system the pointer, then a zero upper half.
type attrPointer struct {
	p  unsafe.Pointer
	hi uint32
}
