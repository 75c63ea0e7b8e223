package main

import (
	"context"
	"database/sql"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/redpacketset/redpacket/cellserver/control"
	"github.com/redpacketset/redpacket/cellserver/gateway"
	"github.com/redpacketset/redpacket/cellserver/routing"
	"github.com/redpacketset/redpacket/cellserver/signing"
	"github.com/redpacketset/redpacket/internal/testenv"
)

// tableWithEndpoints is routingFileJSON(epochs) with cell-0 served at base, so a gateway's
// static resolver finds the server from either copy of the table.
func tableWithEndpoints(epochs int, base string) string {
	return strings.TrimSuffix(routingFileJSON(epochs), "}") + fmt.Sprintf(`,"endpoints":{"cell-0":[%q]}}`, base)
}

// TestPublishedTableReachesServerAndGatewayAheadOfTheirFiles is the seam between the operator
// recording an epoch and the kubelet refreshing mounted ConfigMaps a minute or more later: a
// table the operator published in the cell's control schema is held by the server within a
// poll while its file still says epoch 1 (and reported to the operator's hand-over gate), the
// stale file does not take it back, and a gateway whose own file is stale too gets the table
// from the server on its next probe.
func TestPublishedTableReachesServerAndGatewayAheadOfTheirFiles(t *testing.T) {
	m := testenv.SharedMariaDB(t)
	cfg := testConfig(t, m)
	dir := t.TempDir()
	serverFile := dir + "/server-routing.json"
	if err := os.WriteFile(serverFile, []byte(routingFileJSON(1)), 0o644); err != nil {
		t.Fatal(err)
	}
	cfg.RoutingFile, cfg.RoutingPoll = serverFile, 50*time.Millisecond
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	base, done := startServer(t, ctx, cfg)
	db, err := sql.Open("mysql", m.DSN(""))
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()

	readyEpoch := func() string {
		resp, err := http.Get(base + "/readyz")
		if err != nil {
			return err.Error()
		}
		resp.Body.Close()
		return resp.Header.Get(routing.HeaderRoutingEpoch)
	}
	if got := readyEpoch(); got != "1" {
		t.Fatalf("/readyz says epoch %q before anything was published, want 1", got)
	}
	if err := control.PublishTable(ctx, db, cfg.ControlSchema, 2, []byte(tableWithEndpoints(2, base))); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(20 * time.Second)
	for {
		reps, err := control.ReadRoutingEpochs(ctx, db, cfg.ControlSchema, time.Time{})
		if err == nil && readyEpoch() == "2" && len(reps) == 1 && reps[0].Epoch == 2 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the published epoch 2 was not held while the file says 1: /readyz %q, reports %+v (%v)", readyEpoch(), reps, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	// Many polls of the stale file later, the server still holds epoch 2.
	time.Sleep(20 * cfg.RoutingPoll)
	if got := readyEpoch(); got != "2" {
		t.Fatalf("the stale file took the table back: /readyz says %q", got)
	}
	// The server hands a newer table to whoever asks with an older one, and nothing otherwise.
	for _, c := range []struct {
		after string
		want  int
	}{{"1", http.StatusOK}, {"2", http.StatusNoContent}, {"+1", http.StatusBadRequest}, {"x", http.StatusBadRequest}} {
		resp, err := http.Get(base + routing.PathRouting + "?after=" + c.after)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != c.want {
			t.Errorf("GET %s?after=%s: %d, want %d", routing.PathRouting, c.after, resp.StatusCode, c.want)
		}
	}

	gatewayFile := dir + "/gateway-routing.json"
	if err := os.WriteFile(gatewayFile, []byte(tableWithEndpoints(1, base)), 0o644); err != nil {
		t.Fatal(err)
	}
	w, err := routing.NewWatcher(gatewayFile, time.Hour, slog.Default())
	if err != nil {
		t.Fatal(err)
	}
	gw, err := gateway.New(gateway.Config{Routing: w, Signer: signing.NewSigner([]byte("0123456789abcdef0123456789abcdef"))})
	if err != nil {
		t.Fatal(err)
	}
	gw.Probe(ctx)
	if w.LoadedEpoch() != 2 {
		t.Fatalf("the gateway holds epoch %d after probing a server that holds 2", w.LoadedEpoch())
	}
	if got := gw.ReadyServers("cell-0"); len(got) != 1 || got[0] != base {
		t.Fatalf("ready servers of cell-0 after the table changed hands: %v", got)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}
