package main

import (
	"bufio"
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/redpacketset/redpacket/internal/testenv"
)

// TestGrabServedFromMemcached checks the wiring of the grab cache: with a memcached beside
// the server, grabs on an active packet are answered from it and counted as such.
func TestGrabServedFromMemcached(t *testing.T) {
	m := testenv.SharedMariaDB(t)
	mc := testenv.StartMemcached(t)
	cfg := testConfig(t, m)
	cfg.Memcached = mc.Addr()
	ctx, cancel := context.WithCancel(context.Background())
	ready := make(chan string, 1)
	done := make(chan error, 1)
	go func() { done <- Run(ctx, cfg, slog.Default(), ready) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
		db := m.OpenDB(t, "")
		for _, s := range []string{cfg.CellSchema, cfg.ControlSchema, cfg.WalletSchema, cfg.ShardDBPrefix + "00", cfg.ShardDBPrefix + "01"} {
			_, _ = db.Exec("DROP DATABASE IF EXISTS " + s)
		}
	}()
	var base string
	select {
	case addr := <-ready:
		base = "http://" + addr
	case err := <-done:
		t.Fatalf("Run: %v", err)
	case <-time.After(90 * time.Second):
		t.Fatal("server did not start")
	}
	c := http.DefaultClient
	code, p := post(t, c, base+"/v1/packets", map[string]any{"sender": "a", "requestId": "g", "totalCents": 300, "count": 3, "kind": "fixed"})
	if code != 201 {
		t.Fatalf("wrap: %d %v", code, p)
	}
	id := p["packetId"].(string)
	if code, p := post(t, c, base+"/v1/packets/"+id+"/pay", map[string]any{"paymentTxnId": "t-g", "amountCents": 300}); code != 200 {
		t.Fatalf("pay: %d %v", code, p)
	}
	for i := 0; i < 20; i++ {
		code, g := post(t, c, base+"/v1/packets/"+id+"/grab", map[string]any{"user": fmt.Sprintf("u%d", i)})
		if code != 200 || g["eligible"] != true || g["packetId"] != id {
			t.Fatalf("grab %d: %d %v", i, code, g)
		}
	}
	if code, o := post(t, c, base+"/v1/packets/"+id+"/open", map[string]any{"user": "u0"}); code != 200 {
		t.Fatalf("open: %d %v", code, o)
	}
	if code, g := post(t, c, base+"/v1/packets/"+id+"/grab", map[string]any{"user": "u0"}); code != 200 || g["eligible"] != false || g["reason"] != "already_opened" {
		t.Fatalf("grab after open: %d %v", code, g)
	}
	fromCache, fromDB := grabAnswers(t, base)
	if fromCache < 20 || fromDB > 1 {
		t.Fatalf("grab answers: %v from the cache, %v from the DB; want ≥ 20 and ≤ 1", fromCache, fromDB)
	}
}

// grabAnswers reads redpacket_grab_answers_total from /metrics.
func grabAnswers(t *testing.T, base string) (cache, db float64) {
	t.Helper()
	resp, err := http.Get(base + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		name, val, ok := strings.Cut(sc.Text(), " ")
		if !ok || !strings.HasPrefix(name, "redpacket_grab_answers_total{") {
			continue
		}
		v, err := strconv.ParseFloat(val, 64)
		if err != nil {
			t.Fatalf("metric line %q: %v", sc.Text(), err)
		}
		switch {
		case strings.Contains(name, `source="cache"`):
			cache = v
		case strings.Contains(name, `source="db"`):
			db = v
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return cache, db
}
