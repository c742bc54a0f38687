package lab

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"os/exec"
	"strings"
	"sync"
	"time"
)

// Child is a helper process of a test that serves commands on its stdin, one
// a line, answering one line each on stdout ("error: …" for a failure; the
// child's side is ServeLines). Tests run their own binary this way where a
// socket must be made by another process: another uid, another cgroup.
type Child struct {
	mu  sync.Mutex
	in  io.WriteCloser
	out *bufio.Reader
	cmd *exec.Cmd
}

// StartChild starts cmd with its stdin and stdout as the command channel.
func StartChild(cmd *exec.Cmd) (*Child, error) {
	c := &Child{cmd: cmd}
	var err error
	if c.in, err = cmd.StdinPipe(); err != nil {
		return nil, err
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	c.out = bufio.NewReader(stdout)
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	return c, nil
}

// Line reads one line the child wrote on its own (such as a readiness line).
func (c *Child) Line() (string, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	line, err := c.out.ReadString('\n')
	return strings.TrimSpace(line), err
}

// Do sends one command and returns the answer; an "error: …" answer is
// returned as an error.
func (c *Child) Do(line string) (string, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if _, err := fmt.Fprintln(c.in, line); err != nil {
		return "", fmt.Errorf("write to the helper: %w", err)
	}
	answer, err := c.out.ReadString('\n')
	if err != nil {
		return "", fmt.Errorf("read from the helper: %w", err)
	}
	answer = strings.TrimSpace(answer)
	if msg, ok := strings.CutPrefix(answer, "error: "); ok {
		return "", errors.New(msg)
	}
	return answer, nil
}

// Stop closes the child's stdin and waits for it to exit, killing it (by
// its pid) after a grace period.
func (c *Child) Stop() {
	c.in.Close()
	done := make(chan error, 1)
	go func() { done <- c.cmd.Wait() }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		c.cmd.Process.Kill()
		<-done
	}
}

// ServeLines is the child's side of Child: it answers every line of in with
// do's answer on out, "error: …" (on one line) when do fails, until in ends.
func ServeLines(in io.Reader, out io.Writer, do func(line string) (string, error)) {
	sc := bufio.NewScanner(in)
	w := bufio.NewWriter(out)
	for sc.Scan() {
		answer, err := do(sc.Text())
		if err != nil {
			answer = "error: " + strings.ReplaceAll(err.Error(), "\n", " ")
		}
		fmt.Fprintln(w, answer)
		w.Flush()
	}
}

// AcceptEach serves every connection ln accepts with handle, on a goroutine
// of its own, and closes it after; it returns once ln is closed.
func AcceptEach(ln net.Listener, handle func(net.Conn)) {
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		go func() {
			defer c.Close()
			handle(c)
		}()
	}
}

// Echo writes back what c sends, with plain reads and writes: between two
// TCP sockets io.Copy would splice, which bypasses what a test of socket
// redirection measures.
func Echo(c net.Conn) {
	io.CopyBuffer(struct{ io.Writer }{c}, struct{ io.Reader }{c}, make([]byte, 64<<10))
}
