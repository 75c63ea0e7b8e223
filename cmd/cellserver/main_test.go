package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redpacketset/redpacket/cellserver/ids"
	"github.com/redpacketset/redpacket/cellserver/routing"
	"github.com/redpacketset/redpacket/cellserver/signing"
	"github.com/redpacketset/redpacket/internal/testenv"
)

func TestMain(m *testing.M) { testenv.Main(m) }

func testConfig(t *testing.T, m *testenv.MariaDB) Config {
	t.Helper()
	cfg, err := parseFlags([]string{"-listen", "127.0.0.1:0", "-shard-databases", "2", "-shard-tables", "2", "-memcached", ""})
	if err != nil {
		t.Fatal(err)
	}
	p := testenv.UniqueName("cmd")
	cfg.MySQLDSN = m.DSN("")
	cfg.ShardDBPrefix, cfg.CellSchema, cfg.ControlSchema, cfg.WalletSchema = p+"_db_", p+"_cell", p+"_ctl", p+"_wallet"
	cfg.ServerName = "test-" + p
	cfg.DrainTimeout = 20 * time.Second
	return cfg
}

func post(t *testing.T, client *http.Client, url string, body any) (int, map[string]any) {
	t.Helper()
	j, _ := json.Marshal(body)
	resp, err := client.Post(url, "application/json", bytes.NewReader(j))
	if err != nil {
		t.Fatalf("POST %s: %v", url, err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	var m map[string]any
	_ = json.Unmarshal(raw, &m)
	return resp.StatusCode, m
}

// TestServeAndDrain runs the real wiring (allocator with a worker lease, breaker, queue,
// relay) and checks that shutdown commits queued opens and drains the outbox.
func TestServeAndDrain(t *testing.T) {
	m := testenv.SharedMariaDB(t)
	cfg := testConfig(t, m)
	dir := t.TempDir()
	key := []byte(strings.Repeat("k", 32))
	if err := os.WriteFile(dir+"/key", key, 0o600); err != nil {
		t.Fatal(err)
	}
	cfg.SigningKeyFile = dir + "/key"
	ctx, cancel := context.WithCancel(context.Background())
	ready := make(chan string, 1)
	done := make(chan error, 1)
	go func() { done <- Run(ctx, cfg, slog.Default(), ready) }()
	var addr string
	select {
	case addr = <-ready:
	case err := <-done:
		t.Fatalf("Run: %v", err)
	case <-time.After(90 * time.Second):
		t.Fatal("server did not start")
	}
	base := "http://" + addr
	if code, _ := post(t, http.DefaultClient, base+"/v1/packets", map[string]any{}); code != http.StatusUnauthorized {
		t.Fatalf("unsigned request: %d, want 401", code)
	}
	loadKey, err := signing.LoadKey(cfg.SigningKeyFile)
	if err != nil {
		t.Fatal(err)
	}
	client := &http.Client{Transport: signing.NewSigner(loadKey).RoundTripper(http.DefaultTransport)}
	code, p := post(t, client, base+"/v1/packets", map[string]any{"sender": "a", "requestId": "r", "totalCents": 5000, "count": 50, "kind": "random"})
	if code != 201 {
		t.Fatalf("wrap: %d %v", code, p)
	}
	id := p["packetId"].(string)
	if code, p := post(t, client, base+"/v1/packets/"+id+"/pay", map[string]any{"paymentTxnId": "t", "amountCents": 5000}); code != 200 {
		t.Fatalf("pay: %d %v", code, p)
	}
	var wg sync.WaitGroup
	for i := 0; i < 50; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			if code, p := post(t, client, base+"/v1/packets/"+id+"/open", map[string]any{"user": fmt.Sprintf("u%d", i)}); code != 200 {
				t.Errorf("open: %d %v", code, p)
			}
		}(i)
	}
	wg.Wait()
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("Run after drain: %v", err)
	}
	db := m.OpenDB(t, "")
	var backlog, receipts int
	if err := db.QueryRow("SELECT COUNT(*) FROM " + cfg.CellSchema + ".outbox WHERE delivered = 0").Scan(&backlog); err != nil {
		t.Fatal(err)
	}
	if err := db.QueryRow("SELECT COUNT(*) FROM " + cfg.WalletSchema + ".transfers WHERE kind = 2").Scan(&receipts); err != nil {
		t.Fatal(err)
	}
	if backlog != 0 || receipts != 50 {
		t.Fatalf("after drain: %d undelivered outbox rows, %d credits; want 0 and 50", backlog, receipts)
	}
	for _, s := range []string{cfg.CellSchema, cfg.ControlSchema, cfg.WalletSchema, cfg.ShardDBPrefix + "00", cfg.ShardDBPrefix + "01"} {
		_, _ = db.Exec("DROP DATABASE IF EXISTS " + s)
	}
}

// TestAnswersOnlyForOwnedPackets checks docs/design.md §4.4 and §4.5 on the real wiring: with a
// routing file giving slots 500–999 to another cell, this cell issues no ID there and refuses
// requests for packets created there.
func TestAnswersOnlyForOwnedPackets(t *testing.T) {
	m := testenv.SharedMariaDB(t)
	cfg := testConfig(t, m)
	routingJSON := `{"set":"s","slotCount":1000,"epochs":[{"number":1,"effectiveTime":"2024-01-01T00:00:00Z",
	  "ranges":[{"start":0,"end":499,"cell":"cell-0"},{"start":500,"end":999,"cell":"cell-1"}]}],"masked":[]}`
	path := t.TempDir() + "/routing.json"
	if err := os.WriteFile(path, []byte(routingJSON), 0o644); err != nil {
		t.Fatal(err)
	}
	cfg.RoutingFile = path
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	base, done := startServer(t, ctx, cfg)
	table, err := routing.Parse([]byte(routingJSON))
	if err != nil {
		t.Fatal(err)
	}
	// Wraps come to the home cell of their key (docs/design.md §5): pick keys homed here.
	homedHere := func(base string) string {
		for n := 0; ; n++ {
			id := fmt.Sprintf("%s-%d", base, n)
			if home, err := table.KeyHome(routing.WrapKey("a", id), time.Now()); err == nil && home == "cell-0" {
				return id
			}
		}
	}
	wrap := func(slot string) (int, map[string]any) {
		j, _ := json.Marshal(map[string]any{"sender": "a", "requestId": homedHere("r" + slot), "totalCents": 100, "count": 1, "kind": "fixed"})
		req, _ := http.NewRequest("POST", base+"/v1/packets", bytes.NewReader(j))
		if slot != "" {
			req.Header.Set(routing.HeaderSlot, slot)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var m map[string]any
		_ = json.NewDecoder(resp.Body).Decode(&m)
		return resp.StatusCode, m
	}
	if code, body := wrap("700"); code != 409 || body["code"] != "slot_unavailable" {
		t.Fatalf("wrap in another cell's slot: %d %v", code, body)
	}
	for i := 0; i < 20; i++ {
		code, body := wrap(fmt.Sprint(i * 7))
		if code != 201 {
			t.Fatalf("wrap: %d %v", code, body)
		}
		id, _ := strconv.ParseInt(body["packetId"].(string), 10, 64)
		if id%1000 >= 500 {
			t.Fatalf("issued %d in a slot of cell-1", id)
		}
	}
	if code, body := wrap(""); code != 201 || body["packetId"].(string) == "" {
		t.Fatalf("wrap without slot: %d %v", code, body)
	}
	foreign, err := ids.Compose(ids.Parts{Created: time.Now(), Worker: 1, Slot: 700})
	if err != nil {
		t.Fatal(err)
	}
	code, body := post(t, http.DefaultClient, base+"/v1/packets/"+strconv.FormatInt(foreign, 10)+"/open", map[string]any{"user": "u"})
	if code != http.StatusMisdirectedRequest || body["code"] != "wrong_cell" {
		t.Fatalf("open of another cell's packet: %d %v", code, body)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	db := m.OpenDB(t, "")
	for _, s := range []string{cfg.CellSchema, cfg.ControlSchema, cfg.WalletSchema, cfg.ShardDBPrefix + "00", cfg.ShardDBPrefix + "01"} {
		_, _ = db.Exec("DROP DATABASE IF EXISTS " + s)
	}
}

// startServer runs the cell server in the background until ctx ends and returns its base URL
// once it listens, and the channel Run's result arrives on.
func startServer(t *testing.T, ctx context.Context, cfg Config) (string, <-chan error) {
	t.Helper()
	ready := make(chan string, 1)
	done := make(chan error, 1)
	go func() { done <- Run(ctx, cfg, slog.Default(), ready) }()
	select {
	case addr := <-ready:
		return "http://" + addr, done
	case err := <-done:
		t.Fatalf("Run: %v", err)
	case <-time.After(90 * time.Second):
		t.Fatal("server did not start")
	}
	return "", nil
}
