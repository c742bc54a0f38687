package xds

import (
	"bytes"
	"context"
	"encoding/binary"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/protobuf/proto"

	"github.com/detour-mesh/detour/internal/privtest"
)

// Tests of the transport with curl, whose HTTP/2 is nghttp2's: a client in
// C that shares no code with gRPC-go or x/net (nghttp2 is also one of
// Envoy's HTTP/2 codecs). make deps-apt installs curl.

// requireCurlHTTP2 returns curl's path; it skips (fails under
// DETOUR_REQUIRE_PRIVILEGED=1) without a curl built with HTTP/2.
func requireCurlHTTP2(t *testing.T) string {
	t.Helper()
	curl, err := exec.LookPath("curl")
	if err != nil {
		privtest.Skip(t, "needs curl on PATH (make deps-apt installs it)")
	}
	out, err := exec.Command(curl, "-V").Output()
	if err != nil || !strings.Contains(string(out), "HTTP2") {
		privtest.Skip(t, "needs a curl with HTTP/2 (nghttp2)")
	}
	return curl
}

// readGRPCMessage reads one length-prefixed message from r into msg.
func readGRPCMessage(r io.Reader, msg proto.Message) error {
	var prefix [5]byte
	if _, err := io.ReadFull(r, prefix[:]); err != nil {
		return err
	}
	b := make([]byte, binary.BigEndian.Uint32(prefix[1:]))
	if _, err := io.ReadFull(r, b); err != nil {
		return err
	}
	return proto.Unmarshal(b, msg)
}

// TestTransportWithCurl: curl (nghttp2) watches the health service — it
// sees NOT_SERVING, then SERVING once snapshots are set, on one open stream
// — and checks it: 200, gRPC's content type, the response, grpc-status 0 in
// the trailers. (ADS is not tried with curl: curl 7.88 does not read a
// response while its request body is still open, and an ADS stream whose
// client ended its side ends.)
func TestTransportWithCurl(t *testing.T) {
	t.Parallel()
	curl := requireCurlHTTP2(t)
	srv := NewServer(Options{})
	addr := tcpServe(t, srv)
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	dir := t.TempDir()
	req := filepath.Join(dir, "request")
	if err := os.WriteFile(req, grpcMessage(t, &healthpb.HealthCheckRequest{Service: adsService}), 0o600); err != nil {
		t.Fatal(err)
	}
	args := func(method, headers string) []string {
		return []string{"-sS", "-N", "--http2-prior-knowledge", "--max-time", "20", "-H", "content-type: application/grpc",
			"-H", "te: trailers", "-D", headers, "--data-binary", "@" + req, "http://" + addr + "/grpc.health.v1.Health/" + method}
	}

	watch := exec.CommandContext(ctx, curl, args("Watch", filepath.Join(dir, "watch-headers"))...)
	stdout, err := watch.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr bytes.Buffer
	watch.Stderr = &stderr
	if err := watch.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = watch.Process.Kill(); _ = watch.Wait() }()
	var hr healthpb.HealthCheckResponse
	if err := readGRPCMessage(stdout, &hr); err != nil || hr.GetStatus() != healthpb.HealthCheckResponse_NOT_SERVING {
		t.Fatalf("curl health Watch, first: %v, %v; want NOT_SERVING (curl: %s)", hr.GetStatus(), err, stderr.String())
	}
	snap, _ := testSnapshots(t)
	if _, err := srv.SetSnapshots(ctx, Snapshots{Nodes: map[string]*Snapshot{"n": snap}}); err != nil {
		t.Fatal(err)
	}
	if err := readGRPCMessage(stdout, &hr); err != nil || hr.GetStatus() != healthpb.HealthCheckResponse_SERVING {
		t.Fatalf("curl health Watch after the snapshots: %v, %v; want SERVING (curl: %s)", hr.GetStatus(), err, stderr.String())
	}

	headers := filepath.Join(dir, "check-headers")
	out, err := exec.CommandContext(ctx, curl, args("Check", headers)...).Output()
	if err != nil {
		t.Fatalf("curl health Check: %v", err)
	}
	r := bytes.NewReader(out)
	if err := readGRPCMessage(r, &hr); err != nil || hr.GetStatus() != healthpb.HealthCheckResponse_SERVING {
		t.Errorf("curl health Check: %v, %v; want SERVING", hr.GetStatus(), err)
	}
	if r.Len() != 0 {
		t.Errorf("curl health Check: %d bytes after the response", r.Len())
	}
	b, err := os.ReadFile(headers)
	if err != nil {
		t.Fatal(err)
	}
	h := strings.ReplaceAll(string(b), "\r\n", "\n")
	for _, want := range []string{"HTTP/2 200 \n", "content-type: application/grpc\n", "\ngrpc-status: 0\n"} {
		if !strings.Contains(h, want) {
			t.Errorf("curl's headers and trailers lack %q:\n%s", want, h)
		}
	}
}
