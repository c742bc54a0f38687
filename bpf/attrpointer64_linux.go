//go:build !(386 || arm || mipsle)

package bpf

import "unsafe"

// attrPointer is a pointer in a bpf_attr, a __u64 the kernel reads. It is
// held as an unsafe.Pointer, so that the runtime knows it for a pointer (and
// would move it with a stack the object it points to is on). No padding: a
// struct's padding bytes are not zeroed, and the kernel refuses an attr
// with non-zero bytes where it expects none.
type attrPointer struct{ p unsafe.Pointer }
