package webhook_test

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"
)

// BenchmarkAdmission creates b.N pods (server-side dry run) in a labelled
// namespace of a real kube-apiserver and reports the webhook's own time per
// admission (decode, decide, mutate, encode: Handler.Observe) and the whole
// create as the client sees it, at p50 and p99. Run it with 1,000 creations:
//
//	go test -run '^$' -bench Admission -benchtime 1000x ./inject/webhook/
func BenchmarkAdmission(b *testing.B) {
	cfg := startAPIServer(b)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	var mu sync.Mutex
	var inWebhook []time.Duration
	c := startWebhook(b, ctx, cfg, func(d time.Duration) {
		mu.Lock()
		inWebhook = append(inWebhook, d)
		mu.Unlock()
	})
	mu.Lock()
	inWebhook = inWebhook[:0]
	mu.Unlock()

	client := make([]time.Duration, 0, b.N)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		start := time.Now()
		p, err := c.create(ctx, "meshed", testPod(fmt.Sprintf("bench-%d", i), nil), true)
		if err != nil || !isInjected(p) {
			b.Fatalf("create %d: %v", i, err)
		}
		client = append(client, time.Since(start))
	}
	b.StopTimer()
	mu.Lock()
	defer mu.Unlock()
	if len(inWebhook) < b.N {
		b.Fatalf("the webhook saw %d of %d admissions", len(inWebhook), b.N)
	}
	p50, p99 := percentiles(inWebhook)
	c50, c99 := percentiles(client)
	b.ReportMetric(float64(p50.Microseconds())/1000, "webhook-p50-ms")
	b.ReportMetric(float64(p99.Microseconds())/1000, "webhook-p99-ms")
	b.ReportMetric(float64(c50.Microseconds())/1000, "create-p50-ms")
	b.ReportMetric(float64(c99.Microseconds())/1000, "create-p99-ms")
}

func percentiles(ds []time.Duration) (p50, p99 time.Duration) {
	s := slices.Clone(ds)
	slices.Sort(s)
	return s[len(s)*50/100], s[min(len(s)-1, len(s)*99/100)]
}
