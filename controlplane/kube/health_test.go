package kube

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"regexp"
	"strings"
	"testing"
	"time"

	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/kubernetes"
	"sigs.k8s.io/controller-runtime/pkg/envtest"

	"github.com/detour-mesh/detour/controlplane"
)

// TestWatchHealthRule: a refused list or watch makes the source not ready at
// once and until a watch of that resource opens; any other failure (the API
// server unreachable, restarting) never does, however long it lasts.
func TestWatchHealthRule(t *testing.T) {
	h := newWatchHealth()
	if err := h.check(); err != nil {
		t.Fatalf("nothing failed: %v", err)
	}

	// A dropped connection that client-go reopens at once never shows.
	h.failed("pods", "watch", io.ErrUnexpectedEOF)
	if err := h.check(); err != nil {
		t.Errorf("a dropped watch: %v, want ready", err)
	}
	if !h.watching("pods") {
		t.Error("watching after a failure reported the resource was not failing")
	}

	// The API server unreachable: failures keep coming, and the source stays
	// ready (the mesh it served stays served; Run logs the failures).
	unreachable := errors.New("dial tcp 127.0.0.1:6443: connect: connection refused")
	h.failed("services", "list", unreachable)
	h.failed("services", "watch", unreachable)
	if err := h.check(); err != nil {
		t.Errorf("the API server unreachable: %v, want ready", err)
	}

	// A refusal counts at once, and names the refused resource only.
	forbidden := apierrors.NewForbidden(schema.GroupResource{Group: "discovery.k8s.io", Resource: "endpointslices"}, "", errors.New(`User "x" cannot watch resource "endpointslices"`))
	h.failed("endpointslices", "watch", forbidden)
	err := h.check()
	if err == nil || !strings.Contains(err.Error(), "endpointslices: watch refused: ") || strings.Contains(err.Error(), "services") {
		t.Errorf("a refused watch: %v, want endpointslices: watch refused, and services not named", err)
	}
	if !apierrors.IsForbidden(err) {
		t.Errorf("the error %v does not wrap the Forbidden", err)
	}
	unauthorized := apierrors.NewUnauthorized("token revoked")
	h.failed("pods", "list", unauthorized)
	if err := h.check(); err == nil || !strings.Contains(err.Error(), "pods: list refused: ") {
		t.Errorf("a refused list: %v, want pods: list refused", err)
	}
	h.watching("pods")

	h.watching("services")
	h.watching("endpointslices")
	if err := h.check(); err != nil {
		t.Errorf("every watch open again: %v, want ready", err)
	}
	if h.watching("endpointslices") {
		t.Error("watching an already working resource reported it failing")
	}
}

// TestRefusedWatchMakesControlPlaneUnready: a control plane whose
// credentials may list endpoint slices but not watch them syncs its caches
// (and applied its first mesh) but never sees a change again: /readyz says so,
// naming the resource and the refusal, until watch is granted.
func TestRefusedWatchMakesControlPlaneUnready(t *testing.T) {
	t.Parallel()
	admin := apiServer(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()

	const name = "detour-test-list-only"
	rules := func(watchSlices bool) []rbacv1.PolicyRule {
		slices := []string{"get", "list"}
		if watchSlices {
			slices = append(slices, "watch")
		}
		return []rbacv1.PolicyRule{
			{APIGroups: []string{""}, Resources: []string{"services", "pods", "namespaces"}, Verbs: []string{"get", "list", "watch"}},
			{APIGroups: []string{"discovery.k8s.io"}, Resources: []string{"endpointslices"}, Verbs: slices},
		}
	}
	role := &rbacv1.ClusterRole{ObjectMeta: metav1.ObjectMeta{Name: name}, Rules: rules(false)}
	if _, err := admin.RbacV1().ClusterRoles().Create(ctx, role, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	binding := &rbacv1.ClusterRoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: name},
		Subjects:   []rbacv1.Subject{{Kind: rbacv1.UserKind, APIGroup: rbacv1.GroupName, Name: name}},
	}
	if _, err := admin.RbacV1().ClusterRoleBindings().Create(ctx, binding, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	defer func() {
		_ = admin.RbacV1().ClusterRoleBindings().Delete(context.Background(), name, metav1.DeleteOptions{})
		_ = admin.RbacV1().ClusterRoles().Delete(context.Background(), name, metav1.DeleteOptions{})
	}()
	user, err := env.AddUser(envtest.User{Name: name}, envCfg)
	if err != nil {
		t.Fatal(err)
	}
	client, err := kubernetes.NewForConfig(user.Config())
	if err != nil {
		t.Fatal(err)
	}
	src, err := New(Options{Client: client, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	addr := make(chan string, 1)
	done := make(chan error, 1)
	go func() {
		done <- controlplane.Run(ctx, controlplane.RunOptions{
			Source: src, XDSAddress: "127.0.0.1:0", HTTPAddress: "127.0.0.1:0",
			Listening: func(_, h net.Addr) { addr <- h.String() },
		})
	}()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("control plane after cancel: %v", err)
		}
	}()
	var base string
	select {
	case a := <-addr:
		base = "http://" + a
	case err := <-done:
		t.Fatalf("control plane ended: %v", err)
	}

	// waitReadyz waits for /readyz to answer status with a body containing want.
	waitReadyz := func(status int, want string) string {
		t.Helper()
		deadline := time.Now().Add(90 * time.Second)
		var last string
		for {
			code, body := get(t, base+"/readyz")
			last = body
			if code == status && strings.Contains(body, want) {
				return body
			}
			if time.Now().After(deadline) {
				t.Fatalf("/readyz never answered %d with %q in 90 s; last: %s", status, want, last)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	body := waitReadyz(http.StatusServiceUnavailable, "endpointslices: watch refused: ")
	if !strings.Contains(body, "forbidden") || !strings.Contains(body, name) {
		t.Errorf("/readyz says %q: want the API's refusal, naming the user", body)
	}
	// The caches synced from the lists and the mesh was applied: before,
	// this was a ready control plane whose mesh never changed again.
	deadline := time.Now().Add(30 * time.Second)
	for {
		_, metrics := get(t, base+"/metrics")
		// The first mesh has no workloads: nothing to push, "unchanged".
		if applied.MatchString(metrics) {
			if !strings.Contains(metrics, "detour_source_ready 0") {
				t.Errorf("/metrics: want detour_source_ready 0 while the watch is refused:\n%s", metrics)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no mesh applied from the listed caches in 30 s:\n%s", metrics)
		}
		time.Sleep(100 * time.Millisecond)
	}
	if _, debug := get(t, base+"/debug/nodes"); !strings.Contains(debug, `"ready": false`) || !strings.Contains(debug, "endpointslices: watch refused") {
		t.Errorf("/debug/nodes does not say it is not ready and why:\n%s", debug)
	}
	if code, body := get(t, base+"/readyz"); code != http.StatusServiceUnavailable {
		t.Errorf("/readyz %d %q after the mesh was applied, want 503 while the watch is refused", code, body)
	}

	// The operator grants watch: ready again once the informer's retry opens it.
	role.Rules = rules(true)
	if _, err := admin.RbacV1().ClusterRoles().Update(ctx, role, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitReadyz(http.StatusOK, "ok")
	if _, metrics := get(t, base+"/metrics"); !strings.Contains(metrics, "detour_source_ready 1") {
		t.Errorf("/metrics: want detour_source_ready 1 once the watch works")
	}
}

// applied matches /metrics once a mesh has been applied.
var applied = regexp.MustCompile(`(?m)^detour_config_updates_total\{result="(applied|unchanged)"\} [1-9]`)

func get(t *testing.T, url string) (int, string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, string(b)
}
