package main

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redpacketset/redpacket/cellserver/gateway"
	"github.com/redpacketset/redpacket/cellserver/routing"
	"github.com/redpacketset/redpacket/cellserver/signing"
	"github.com/redpacketset/redpacket/internal/testenv"
)

// captured is one signed call the gateway put on the wire to a cell server.
type captured struct {
	server string // base URL it was sent to
	method string
	uri    string
	header http.Header
	body   []byte
}

// wiretap records every request the gateway sends, as an eavesdropper between the tiers would.
type wiretap struct {
	mu    sync.Mutex
	calls []captured
}

func (w *wiretap) RoundTrip(req *http.Request) (*http.Response, error) {
	var body []byte
	if req.Body != nil {
		var err error
		if body, err = io.ReadAll(req.Body); err != nil {
			return nil, err
		}
		req.Body.Close()
		req.Body = io.NopCloser(bytes.NewReader(body))
	}
	w.mu.Lock()
	w.calls = append(w.calls, captured{server: req.URL.Scheme + "://" + req.URL.Host, method: req.Method,
		uri: req.URL.RequestURI(), header: req.Header.Clone(), body: body})
	w.mu.Unlock()
	return http.DefaultTransport.RoundTrip(req)
}

// last is the most recent call whose path ends with suffix and is not a probe.
func (w *wiretap) last(t *testing.T, method, suffix string) captured {
	t.Helper()
	w.mu.Lock()
	defer w.mu.Unlock()
	for i := len(w.calls) - 1; i >= 0; i-- {
		c := w.calls[i]
		if c.method == method && strings.HasSuffix(strings.SplitN(c.uri, "?", 2)[0], suffix) {
			return c
		}
	}
	t.Fatalf("gateway sent no %s …%s", method, suffix)
	return captured{}
}

type fixedTable struct{ t *routing.Table }

func (f fixedTable) Current() *routing.Table { return f.t }

// oneCellTwoServers runs two real cell servers of one cell (one MariaDB, shared schemas, each
// with its own replay cache) and a gateway in front of them whose calls are tapped.
func oneCellTwoServers(t *testing.T) (servers []string, front string, tap *wiretap, key []byte) {
	t.Helper()
	m := testenv.SharedMariaDB(t)
	cfg := testConfig(t, m)
	key = []byte(strings.Repeat("r", 32))
	cfg.SigningKeyFile = filepath.Join(t.TempDir(), "key")
	if err := os.WriteFile(cfg.SigningKeyFile, key, 0o600); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		db := m.OpenDB(t, "")
		for _, s := range []string{cfg.CellSchema, cfg.ControlSchema, cfg.WalletSchema, cfg.ShardDBPrefix + "00", cfg.ShardDBPrefix + "01"} {
			_, _ = db.Exec("DROP DATABASE IF EXISTS " + s)
		}
	})
	for i, name := range []string{cfg.ServerName + "-a", cfg.ServerName + "-b"} {
		c := cfg
		c.ServerName = name
		ctx, cancel := context.WithCancel(context.Background())
		ready := make(chan string, 1)
		done := make(chan error, 1)
		go func() { done <- Run(ctx, c, slog.Default(), ready) }()
		select {
		case addr := <-ready:
			servers = append(servers, "http://"+addr)
		case err := <-done:
			cancel()
			t.Fatalf("Run server %d: %v", i, err)
		case <-time.After(90 * time.Second):
			cancel()
			t.Fatalf("server %d did not start", i)
		}
		t.Cleanup(func() {
			cancel()
			if err := <-done; err != nil {
				t.Errorf("Run %s: %v", name, err)
			}
		})
	}

	table := &routing.Table{Set: "rp", SlotCount: 1000, Endpoints: map[string][]string{cfg.Cell: servers},
		Epochs: []routing.Epoch{{Number: 1, EffectiveTime: time.Date(2024, 1, 1, 0, 0, 0, 0, time.UTC),
			Ranges: []routing.SlotRange{{Start: 0, End: 999, Cell: cfg.Cell}}}}}
	tap = &wiretap{}
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	gw, err := gateway.New(gateway.Config{Routing: fixedTable{table}, Signer: signing.NewSigner(key),
		Client: &http.Client{Transport: tap, Timeout: 10 * time.Second}, Log: quiet})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	deadline := time.Now().Add(30 * time.Second)
	for gw.Probe(ctx); len(gw.ReadyServers(cfg.Cell)) != 2; gw.Probe(ctx) {
		if time.Now().After(deadline) {
			t.Fatalf("gateway sees %v ready of %v", gw.ReadyServers(cfg.Cell), servers)
		}
		time.Sleep(20 * time.Millisecond) // polling with a deadline
	}
	fs := httptest.NewServer(gw.Handler())
	t.Cleanup(fs.Close)
	return servers, fs.URL, tap, key
}

func call(t *testing.T, method, url, host string, header http.Header, body []byte) (int, map[string]any, string) {
	t.Helper()
	req, err := http.NewRequest(method, url, bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	for k, vs := range header {
		req.Header[k] = vs
	}
	if host != "" {
		req.Host = host
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	var m map[string]any
	_ = json.Unmarshal(raw, &m)
	return resp.StatusCode, m, string(raw)
}

// TestReplayToSiblingServerIsRefused: a request the gateway signed for one server of a cell,
// captured on the wire and sent to the other server of the same cell, is refused (issue 10
// §3), while the normal path through the gateway works.
func TestReplayToSiblingServerIsRefused(t *testing.T) {
	servers, front, tap, _ := oneCellTwoServers(t)
	code, p, raw := call(t, "POST", front+"/v1/packets", "", nil, []byte(`{"sender":"alice","requestId":"rp-1","totalCents":300,"count":3,"kind":"fixed"}`))
	if code != http.StatusCreated {
		t.Fatalf("create through the gateway: %d %s", code, raw)
	}
	id := p["packetId"].(string)
	if code, _, raw := call(t, "POST", front+"/v1/packets/"+id+"/pay", "", nil, []byte(`{"paymentTxnId":"rp-pay-1","amountCents":300}`)); code != http.StatusOK {
		t.Fatalf("pay through the gateway: %d %s", code, raw)
	}
	if code, o, raw := call(t, "POST", front+"/v1/packets/"+id+"/open", "", nil, []byte(`{"user":"bob"}`)); code != http.StatusOK || o["amountCents"] != float64(100) {
		t.Fatalf("open through the gateway: %d %s", code, raw)
	}
	if code, _, raw := call(t, "GET", front+"/v1/packets/"+id, "", nil, nil); code != http.StatusOK {
		t.Fatalf("details through the gateway: %d %s", code, raw)
	}

	replays := []captured{tap.last(t, "POST", "/open"), tap.last(t, "GET", "/"+id), tap.last(t, "POST", "/pay"), tap.last(t, "POST", "/v1/packets")}
	for _, c := range replays {
		sibling := servers[0]
		if c.server == servers[0] {
			sibling = servers[1]
		}
		// Byte for byte: the Host still names the server the gateway signed for.
		code, body, raw := call(t, c.method, sibling+c.uri, strings.TrimPrefix(c.server, "http://"), c.header, c.body)
		if code != http.StatusUnauthorized || body["code"] != "unauthorized" || body["field"] != "Host" {
			t.Errorf("%s %s replayed to the sibling server: %d %s, want 401 unauthorized on Host", c.method, c.uri, code, raw)
		}
		// With the Host rewritten to the sibling, the signature no longer matches.
		code, body, raw = call(t, c.method, sibling+c.uri, "", c.header, c.body)
		if code != http.StatusUnauthorized || body["field"] != signing.HeaderSignature {
			t.Errorf("%s %s replayed to the sibling with its own Host: %d %s, want 401 on the signature", c.method, c.uri, code, raw)
		}
		// And to the server it was signed for, it is a replay.
		code, body, raw = call(t, c.method, c.server+c.uri, "", c.header, c.body)
		if code != http.StatusUnauthorized || body["field"] != signing.HeaderRequestID {
			t.Errorf("%s %s replayed to its own server: %d %s, want 401 on the request id", c.method, c.uri, code, raw)
		}
	}
	// Each replay as captured reached a sibling, which counted it.
	wrong := 0.0
	for _, s := range servers {
		wrong += metricValue(t, s, `redpacket_signing_refused_total{reason="wrong_server"}`)
	}
	if wrong != float64(len(replays)) {
		t.Errorf("servers counted %v wrong_server refusals, want %d", wrong, len(replays))
	}
	// The refusals changed nothing, and the gateway still serves.
	code, d, raw := call(t, "GET", front+"/v1/packets/"+id, "", nil, nil)
	if code != http.StatusOK {
		t.Fatalf("details after the replays: %d %s", code, raw)
	}
	if pk := d["packet"].(map[string]any); pk["remainingCount"] != float64(2) || len(d["receivers"].([]any)) != 1 {
		t.Fatalf("after the replays: %s", raw)
	}
	if code, o, raw := call(t, "POST", front+"/v1/packets/"+id+"/open", "", nil, []byte(`{"user":"carol"}`)); code != http.StatusOK || o["repeat"] != false {
		t.Fatalf("open after the replays: %d %s", code, raw)
	}
}

// TestErrorsAgreeAcrossTiers: a client gets the same status, code and field for one fault
// whether the gateway refuses it or forwards it to the cell that does (issue 10 §5).
func TestErrorsAgreeAcrossTiers(t *testing.T) {
	servers, front, _, key := oneCellTwoServers(t)
	signed := &http.Client{Transport: signing.NewSigner(key).RoundTripper(http.DefaultTransport)}
	direct := func(method, path string, body []byte) (int, map[string]any, string) {
		req, _ := http.NewRequest(method, servers[0]+path, bytes.NewReader(body))
		resp, err := signed.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		raw, _ := io.ReadAll(resp.Body)
		var m map[string]any
		_ = json.Unmarshal(raw, &m)
		return resp.StatusCode, m, string(raw)
	}
	id := "386226246909952280"
	for _, c := range []struct {
		method, path, body string
		status             int
		code, field        string
	}{
		{"GET", "/v1/packets/abc", "", 400, "invalid_input", "id"},
		{"POST", "/v1/packets/-5/open", `{"user":"u"}`, 400, "invalid_input", "id"},
		{"POST", "/v1/packets", `{"sender":"a","requestId":"tiers","TotalCents":100,"count":1,"kind":"fixed"}`, 400, "invalid_input", "TotalCents"},
		{"POST", "/v1/packets", `null`, 400, "malformed_json", ""},
		{"POST", "/v1/packets/" + id + "/steal", `{}`, 404, "no_route", ""},
		{"GET", "/v1/nothing", "", 404, "no_route", ""},
	} {
		for tier, do := range map[string]func(string, string, []byte) (int, map[string]any, string){
			"gateway": func(m, p string, b []byte) (int, map[string]any, string) { return call(t, m, front+p, "", nil, b) },
			"cell":    direct,
		} {
			code, body, raw := do(c.method, c.path, []byte(c.body))
			field, hasField := body["field"]
			if code != c.status || body["code"] != c.code || (c.field == "" && hasField) || (c.field != "" && field != c.field) {
				t.Errorf("%s %s at the %s: %d %s, want %d %s field %q", c.method, c.path, tier, code, raw, c.status, c.code, c.field)
			}
		}
	}
}

func TestAuthorityFlag(t *testing.T) {
	cfg, err := parseFlags([]string{"-authority", "rp-cell-0-server-1.rp.svc:8080, 10.0.0.7:8080", "-authority", "localhost:8080"})
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"rp-cell-0-server-1.rp.svc:8080", "10.0.0.7:8080", "localhost:8080"}
	if strings.Join(cfg.Authorities, " ") != strings.Join(want, " ") {
		t.Fatalf("authorities %q, want %q", cfg.Authorities, want)
	}
	if cfg, _ := parseFlags(nil); cfg.Authorities != nil {
		t.Fatalf("default authorities %q, want none (the connection's own address)", cfg.Authorities)
	}
	if _, err := parseFlags([]string{"-authority", "a:1,,b:2"}); err == nil {
		t.Fatal("empty authority accepted")
	}
}

// metricValue reads one sample from a server's /metrics (0 when absent).
func metricValue(t *testing.T, base, sample string) float64 {
	t.Helper()
	resp, err := http.Get(base + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	for line := range strings.Lines(string(raw)) {
		if v, ok := strings.CutPrefix(strings.TrimSpace(line), sample+" "); ok {
			f, err := strconv.ParseFloat(v, 64)
			if err != nil {
				t.Fatalf("metric line %q: %v", line, err)
			}
			return f
		}
	}
	return 0
}
