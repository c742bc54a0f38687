package xds

import (
	"sync"
	"time"
)

// A push marshals every proxy's SotW response (a hundred listeners are about
// 66 KiB) into a pooled buffer that the connection's writer (h2write.go)
// returns once written. The push workers would marshal responses faster than the
// writers, which run on the same few CPUs, write them: at 10,000 proxies
// most of a push's responses would be in memory at once, and each buffer
// would be cold by the time it is written. So a push worker sends its next
// response only once its previous one is written (pushQueue.work) — or after
// pushMaxWait, so that a proxy that stopped reading holds a worker back once
// and no longer.

// pushMaxWait bounds how long a push worker waits for its last response to
// be written.
const pushMaxWait = 100 * time.Millisecond

// flight is one response a push worker sent: done is closed once the
// response is released (buffer.go): written by the connection's writer, or
// dropped unwritten (or at once when it was not pooled).
type flight struct {
	done chan struct{}
	once sync.Once
}

// finish closes done, once however often it is called; f may be nil.
func (f *flight) finish() {
	if f != nil {
		f.once.Do(func() { close(f.done) })
	}
}

// wait returns once f is written, or after pushMaxWait.
func (f *flight) wait() {
	if f == nil {
		return
	}
	t := time.NewTimer(pushMaxWait)
	defer t.Stop()
	select {
	case <-f.done:
	case <-t.C:
	}
}

// flights hands the codec the flight of a message about to be sent (the
// codec marshals it on the sending goroutine, inside SendMsg).
type flights struct{ m sync.Map } // message → *flight

// expect registers msg's flight before it is sent.
func (fs *flights) expect(msg any) *flight {
	f := &flight{done: make(chan struct{})}
	fs.m.Store(msg, f)
	return f
}

// take returns msg's flight, if one was registered, and forgets it.
func (fs *flights) take(msg any) *flight {
	if fs == nil {
		return nil
	}
	if f, ok := fs.m.LoadAndDelete(msg); ok {
		return f.(*flight)
	}
	return nil
}
