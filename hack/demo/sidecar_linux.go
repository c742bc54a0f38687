package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/detour-mesh/detour/internal/origdst"
)

// event is one line the stand-in sidecar prints on stdout.
type event struct {
	Ready    bool           `json:"ready,omitempty"`
	Sync     string         `json:"sync,omitempty"`
	Kind     string         `json:"kind,omitempty"` // outbound or inbound
	Peer     netip.AddrPort `json:"peer,omitzero"`
	Original netip.AddrPort `json:"original,omitzero"`
	Error    string         `json:"error,omitempty"`
	// Answers to a "dial ID ADDR" request: the sidecar's own connection.
	Dial   string          `json:"dial,omitempty"`
	Client netip.AddrPort  `json:"client,omitzero"`
	Reply  json.RawMessage `json:"reply,omitempty"`
}

// sidecar is the stand-in proxy, run as the proxy user inside the app namespace:
// it accepts what detour redirected to its outbound and inbound ports, logs each
// connection's original destination, and forwards it there (inbound: from the
// passthrough source 127.0.0.6, which detour leaves alone). It prints events as
// JSON lines; a "sync ID" line on stdin is answered with {"sync":"ID"} after every
// event logged before it, and "dial ID ADDR" makes the sidecar itself connect to ADDR
// (its own traffic, which detour must leave alone) and report the answer.
func sidecar(args []string) int {
	fs := flag.NewFlagSet("sidecar", flag.ContinueOnError)
	outPort := fs.Uint("outbound-port", 15001, "port of redirected outbound connections")
	inPort := fs.Uint("inbound-port", 15006, "port of redirected inbound connections")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	var mu sync.Mutex
	enc := json.NewEncoder(os.Stdout)
	emit := func(e event) {
		mu.Lock()
		defer mu.Unlock()
		_ = enc.Encode(e)
	}
	listen := map[string]string{
		"outbound": fmt.Sprintf(":%d", *outPort),
		"inbound":  fmt.Sprintf(":%d", *inPort),
	}
	for kind, addr := range listen {
		for _, network := range []string{"tcp4", "tcp6"} {
			ln, err := net.Listen(network, addr)
			if err != nil {
				fmt.Fprintln(os.Stderr, "sidecar:", err)
				return 1
			}
			go serve(ln, kind, emit)
		}
	}
	emit(event{Ready: true})
	sc := bufio.NewScanner(os.Stdin)
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		switch {
		case len(f) == 2 && f[0] == "sync":
			emit(event{Sync: f[1]})
		case len(f) == 3 && f[0] == "dial":
			emit(dial(f[1], f[2]))
		}
	}
	return 0
}

// dial connects to addr and returns the first line the server there sent.
func dial(id, addr string) event {
	e := event{Dial: id}
	c, err := net.DialTimeout("tcp", addr, 3*time.Second)
	if err != nil {
		e.Error = err.Error()
		return e
	}
	defer c.Close()
	e.Client = c.LocalAddr().(*net.TCPAddr).AddrPort()
	_ = c.SetDeadline(time.Now().Add(3 * time.Second))
	line, err := bufio.NewReader(c).ReadBytes('\n')
	if err != nil {
		e.Error = err.Error()
		return e
	}
	e.Reply = json.RawMessage(bytes.TrimSpace(line))
	return e
}

func serve(ln net.Listener, kind string, emit func(event)) {
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		go forward(c.(*net.TCPConn), kind, emit)
	}
}

func forward(c *net.TCPConn, kind string, emit func(event)) {
	defer c.Close()
	e := event{Kind: kind, Peer: c.RemoteAddr().(*net.TCPAddr).AddrPort()}
	dst, err := origdst.Get(c)
	if err != nil {
		e.Error = err.Error()
		emit(e)
		return
	}
	e.Original = dst
	// Logged before forwarding: by the time the client sees an answer, the event is
	// in the pipe ahead of any later sync reply.
	emit(e)
	var d net.Dialer
	if kind == "inbound" {
		// The passthrough source, which detour does not capture again. Without it the
		// proxy's connection to the pod's own address would be sent back to the
		// inbound port (hairpin), so an unusable source fails the dial instead.
		src := net.IPv4(127, 0, 0, 6)
		if dst.Addr().Is6() && !dst.Addr().Is4In6() {
			src = net.ParseIP("::6")
		}
		d.LocalAddr = &net.TCPAddr{IP: src}
	}
	up, err := d.Dial("tcp", dst.String())
	if err != nil {
		return
	}
	defer up.Close()
	done := make(chan struct{})
	go func() {
		_, _ = io.Copy(up, c)
		_ = up.(*net.TCPConn).CloseWrite()
		close(done)
	}()
	_, _ = io.Copy(c, up)
	_ = c.CloseWrite()
	<-done
}
