package main

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/redpacketset/redpacket/cellserver/ids"
	"github.com/redpacketset/redpacket/cellserver/routing"
	"github.com/redpacketset/redpacket/cellserver/signing"
)

// TestGatewayBinaryServes runs the command's own run with a routing file and a key file,
// against a cell server that verifies signatures, and checks readiness, routing and metrics.
func TestGatewayBinaryServes(t *testing.T) {
	dir := t.TempDir()
	key := []byte("cmd-gateway-test-key-0123456789abcdef")
	keyFile := filepath.Join(dir, "key")
	if err := os.WriteFile(keyFile, append(key, '\n'), 0o600); err != nil {
		t.Fatal(err)
	}
	cell := httptest.NewServer(signing.NewVerifier(key, 0).Middleware(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, `{"path":%q}`, r.URL.Path)
	})))
	defer cell.Close()
	table := &routing.Table{
		Set: "rp", SlotCount: 10,
		Epochs:    []routing.Epoch{{Number: 1, EffectiveTime: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC), Ranges: []routing.SlotRange{{Start: 0, End: 9, Cell: "rp-cell-0"}}}},
		Endpoints: map[string][]string{"rp-cell-0": {cell.URL}},
	}
	data, err := table.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	routingFile := filepath.Join(dir, "routing.json")
	if err := os.WriteFile(routingFile, data, 0o644); err != nil {
		t.Fatal(err)
	}

	ctx, cancel := context.WithCancel(context.Background())
	addrc := make(chan string, 1)
	done := make(chan error, 1)
	go func() {
		done <- run(ctx, []string{"-listen", "127.0.0.1:0", "-routing-file", routingFile, "-signing-key-file", keyFile, "-probe-interval", "20ms", "-log-level", "warn", "-drain-delay", "300ms"},
			func(addr string) { addrc <- addr })
	}()
	var base string
	select {
	case addr := <-addrc:
		base = "http://" + addr
	case err := <-done:
		t.Fatalf("gateway exited: %v", err)
	case <-time.After(10 * time.Second):
		t.Fatal("gateway did not start")
	}

	deadline := time.Now().Add(5 * time.Second)
	for get(t, base+"/readyz").status != http.StatusOK {
		if time.Now().After(deadline) {
			t.Fatal("gateway never ready")
		}
		time.Sleep(10 * time.Millisecond) // polling with a deadline
	}
	id, _ := ids.Compose(ids.Parts{Created: time.Now(), Slot: 4})
	if r := get(t, fmt.Sprintf("%s/v1/packets/%d", base, id)); r.status != http.StatusOK || !strings.Contains(r.body, fmt.Sprint(id)) {
		t.Fatalf("details through the binary: %d %s", r.status, r.body)
	}
	if r := get(t, base+"/metrics"); r.status != http.StatusOK || !strings.Contains(r.body, `rp_gateway_requests_total{code="200",verb="details"} 1`) || !strings.Contains(r.body, "rp_gateway_routing_epoch 1") {
		t.Fatalf("metrics: %d\n%s", r.status, r.body)
	}
	cancel()
	// While draining, readiness fails but requests are still served.
	deadline = time.Now().Add(5 * time.Second)
	for get(t, base+"/readyz").status != http.StatusServiceUnavailable {
		if time.Now().After(deadline) {
			t.Fatal("gateway stayed ready after shutdown began")
		}
		time.Sleep(5 * time.Millisecond) // polling with a deadline
	}
	if r := get(t, fmt.Sprintf("%s/v1/packets/%d", base, id)); r.status != http.StatusOK {
		t.Fatalf("request during drain: %d", r.status)
	}
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("clean shutdown returned %v", err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("gateway did not stop")
	}
}

func TestFlagErrors(t *testing.T) {
	ctx := context.Background()
	for _, args := range [][]string{
		{},
		{"-routing-file", "x"},
		{"-routing-file", "x", "-signing-key-file", "/nonexistent"},
		{"-log-level", "loud"},
		{"-no-such-flag"},
	} {
		if err := run(ctx, args, nil); err == nil {
			t.Errorf("run %v succeeded", args)
		}
	}
}

type result struct {
	status int
	body   string
}

func get(t *testing.T, url string) result {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return result{resp.StatusCode, string(b)}
}
